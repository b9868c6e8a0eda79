"""Experiment trackers (`logging.trackers`): jsonl, wandb, mlflow, tensorboard, in a registry (base.py)."""

from open_vlm.tracking import jsonl, mlflow_run, tensorboard_run, wandb_run  # noqa: F401  (registers them)
from open_vlm.tracking.base import (
    DataInput,
    TrackedRun,
    Tracker,
    check_trackers,
    open_trackers,
    preflight_trackers,
    register_tracker,
    selected_trackers,
    tracker_names,
)

__all__ = [
    "DataInput",
    "TrackedRun",
    "Tracker",
    "check_trackers",
    "open_trackers",
    "preflight_trackers",
    "register_tracker",
    "selected_trackers",
    "tracker_names",
]
