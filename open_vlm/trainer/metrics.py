"""Metrics: one record per logged step to the console and the trackers (metrics.jsonl, wandb, mlflow, ...)."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from pathlib import Path

import torch

from open_vlm.config.schema import RunConfig
from open_vlm.runfolder import MetricsWriter

log = logging.getLogger(__name__)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class ThroughputWindow:
    """Steps, samples and tokens (all ranks) and data-wait time between two logged steps.

    Time spent saving or evaluating is left out (`excluded()`), so a save never reads as slow training.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.samples = self.tokens = self.flops = 0.0
        self.data_wait = self.paused = 0.0
        self.start = time.perf_counter()

    def add_step(self, samples: float, tokens: float, flops: float = 0.0) -> None:
        """One optimizer step with these global (summed over ranks) counts and model FLOPs."""
        self.steps += 1
        self.samples += samples
        self.tokens += tokens
        self.flops += flops

    @contextlib.contextmanager
    def excluded(self):
        """Time inside this block does not count as training time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - t0

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    def record(self, world: int, peak_flops: float | None = None) -> dict:
        """Per-device rates and per-step times of the window; achieved TFLOP/s and MFU when the peak is known."""
        elapsed, steps = self.elapsed(), max(self.steps, 1)
        out = {
            "samples_per_sec_per_device": self.samples / world / elapsed,
            "tokens_per_sec_per_device": self.tokens / world / elapsed,
            "data_wait_sec": self.data_wait / steps,
            "step_time_sec": elapsed / steps,
        }
        if peak_flops:
            achieved = self.flops / world / elapsed
            out["tflops_per_device"] = achieved / 1e12
            out["mfu"] = achieved / peak_flops
        return out


class MetricsLogger:
    """Rank 0 logs to the trackers of `logging.trackers` (open_vlm/tracking); other ranks keep quiet.

    Built with the trainer; the trackers open in `start()`, once the run knows the step it resumes at and
    the data it reads. System stats join the first record logged at or after every `logging.system_every_steps`.
    """

    def __init__(self, cfg: RunConfig, run_folder: Path, enabled: bool, device: torch.device | None = None):
        from open_vlm.tracking import check_trackers, selected_trackers

        check_trackers(cfg.logging)
        self.cfg, self.folder, self.enabled = cfg, run_folder, enabled
        self.names = selected_trackers(cfg.logging)
        # The loop truncates the file on resume whether or not the trackers have opened yet.
        self.writer = MetricsWriter(run_folder / "metrics.jsonl", enabled=enabled and "jsonl" in self.names)
        self.trackers: list = []
        self.system = None
        self.system_every = cfg.logging.system_every_steps
        self._last_system = 0
        self.progress = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=cfg.train.max_steps, desc="train", unit="step", dynamic_ncols=True)
        if enabled and self.system_every:
            from open_vlm.tracking.system import SystemStats

            self.system = SystemStats(device or torch.device("cpu"))

    def start(self, step: int, inputs: list) -> None:
        """Open the trackers for a run at `step` reading `inputs` (`tracking.DataInput`s)."""
        if not self.enabled:
            return
        from open_vlm.tracking import TrackedRun, open_trackers

        run = TrackedRun(self.cfg, self.folder, job="train", step=step, inputs=inputs)
        self.trackers = open_trackers(run, self.names)
        self._last_system = step

    def step(self, step: int) -> None:
        if self.progress is not None:
            self.progress.n = step
            self.progress.refresh()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        step = record["step"]
        if self.system is not None and step // self.system_every > self._last_system // self.system_every:
            record = {**record, **self.system.sample()}
            self._last_system = step
        for tracker in self.trackers:
            tracker.log_metrics(step, record)
        log.info(
            "step %d loss %.4f lr %.2e grad_norm %.3f %.1f samples/s/device %.0f tokens/s/device",
            record["step"],
            record["loss"],
            record["lr"],
            record["grad_norm"],
            record["samples_per_sec_per_device"],
            record["tokens_per_sec_per_device"],
        )

    def checkpoint_saved(self, url: str) -> None:
        """The latest checkpoint's URI, as the run's `checkpoint_uri` tag."""
        for tracker in self.trackers:
            tracker.set_tag("checkpoint_uri", url)

    def close(self, failed: bool = False) -> None:
        if self.progress is not None:
            self.progress.close()
        for tracker in self.trackers:
            tracker.close("FAILED" if failed else "FINISHED")
        self.trackers = []
