"""`logging.trackers: [wandb]` (or `logging.wandb.mode online|offline`): a Weights & Biases run per run folder."""

from __future__ import annotations

import dataclasses

from open_vlm.tracking.base import TrackedRun, Tracker, numbers, register_tracker


@register_tracker("wandb")
class WandbTracker(Tracker):
    """Resumes the same wandb run (id `<project>-<name>`) when training resumes; never logs secrets."""

    requires = ("wandb",)
    logs_evaluations = False  # open-vlm eval logs its table and plot itself (evaluation/report.py)

    def __init__(self, run: TrackedRun):
        super().__init__(run)
        import wandb

        cfg = run.cfg
        settings = cfg.logging.wandb
        self.wandb = wandb.init(
            project=settings.project or cfg.run.project,
            entity=settings.entity,
            name=cfg.run.name,
            dir=str(run.folder),
            # Listing wandb in logging.trackers with the mode left `disabled` means wandb's own default.
            mode=settings.mode if settings.mode != "disabled" else "online",
            config=dataclasses.asdict(cfg),
            resume="allow",
            id=f"{cfg.run.project}-{cfg.run.name}".replace("/", "-"),
        )

    def log_metrics(self, step: int, record: dict) -> None:
        self.wandb.log(numbers(record), step=step)

    def log_image(self, tag: str, path, step: int) -> None:
        import wandb

        self.wandb.log({tag: wandb.Image(str(path))}, step=step)

    def set_tag(self, key: str, value: str) -> None:
        self.wandb.summary[key] = value

    def close(self, status: str = "FINISHED") -> None:
        self.wandb.finish(exit_code=0 if status == "FINISHED" else 1)
