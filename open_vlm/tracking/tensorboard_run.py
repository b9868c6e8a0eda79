"""`logging.trackers: [tensorboard]`: event files in `<run folder>/tensorboard` (scalars, the config, plots)."""

from __future__ import annotations

from pathlib import Path

from open_vlm.tracking.base import TrackedRun, Tracker, numbers, register_tracker

LOG_DIR = "tensorboard"


@register_tracker("tensorboard")
class TensorBoardTracker(Tracker):
    """A `SummaryWriter` on the run folder; a resumed run purges the steps after its checkpoint."""

    requires = ("tensorboard",)

    def __init__(self, run: TrackedRun):
        super().__init__(run)
        from torch.utils.tensorboard import SummaryWriter

        # Steps after the checkpoint were logged by the interrupted run and are logged again now: hide the old.
        purge = run.step + 1 if run.resumed and run.job == "train" else None
        self.writer = SummaryWriter(log_dir=str(run.folder / LOG_DIR), purge_step=purge)
        config = run.folder / "config.yaml"
        if config.exists() and run.job == "train":
            # Markdown: an indented block keeps the YAML as written.
            text = "\n".join("    " + line for line in config.read_text().splitlines())
            self.writer.add_text("config", text, global_step=run.step)

    def log_metrics(self, step: int, record: dict) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, pixels, global_step=step, dataformats="HWC")

    def set_tag(self, key: str, value: str) -> None:
        self.writer.add_text(key, value)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.flush()
        self.writer.close()
