"""`open-vlm eval` results to the trackers: summary numbers, the plots (artifacts / images) and report files.

In the run folder of a training run, the MLflow run and the TensorBoard log are the training's own, so the
final evaluation's plots sit beside the training curves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from open_vlm.config.schema import RunConfig
from open_vlm.tracking.base import TrackedRun, open_trackers, selected_trackers, tracker_class

log = logging.getLogger(__name__)


def evaluated_step(checkpoint: str | None) -> int:
    """The training step of the evaluated checkpoint (or run folder), 0 when there is none to tell."""
    if not checkpoint:
        return 0
    from open_vlm.checkpoint.checkpointer import read_meta, resolve_checkpoint

    try:
        return int(read_meta(resolve_checkpoint(checkpoint)).get("step", 0))
    except (FileNotFoundError, ValueError, KeyError):  # an exported folder: no training step
        return 0


def log_evaluation(
    cfg: RunConfig,
    folder: Path,
    metrics: dict[str, float],
    images: dict[str, Path] | None = None,
    files: list[Path] | None = None,
    step: int = 0,
) -> list[str]:
    """Log one evaluation to every configured tracker that takes evaluations; returns their names."""
    names = [name for name in selected_trackers(cfg.logging) if tracker_class(name).logs_evaluations]
    if not names:
        return []
    trackers = open_trackers(TrackedRun(cfg, folder, job="eval", step=step), names)
    failed = True
    try:
        for tracker in trackers:
            tracker.log_metrics(step, {"step": step, **metrics})
            for tag, path in (images or {}).items():
                tracker.log_image(tag, path, step)
            for path in files or []:
                tracker.log_file(path, "eval")
        failed = False
    finally:
        for tracker in trackers:
            tracker.close("FAILED" if failed else "FINISHED")
    log.info("evaluation logged to %s", ", ".join(names))
    return names
