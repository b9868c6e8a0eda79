"""`logging.trackers: [jsonl]`: one JSON object per logged step appended to `<run folder>/metrics.jsonl`."""

from __future__ import annotations

from open_vlm.runfolder import MetricsWriter
from open_vlm.tracking.base import TrackedRun, Tracker, register_tracker


@register_tracker("jsonl")
class JsonlTracker(Tracker):
    """The run folder's metrics file (`open-vlm eval` writes its own `eval-*.json` instead)."""

    logs_evaluations = False

    def __init__(self, run: TrackedRun):
        super().__init__(run)
        self.writer = MetricsWriter(run.folder / "metrics.jsonl")

    def log_metrics(self, step: int, record: dict) -> None:
        self.writer.write(record)
