"""Metrics: one record per logged step to metrics.jsonl, the console and (optionally) wandb."""

from __future__ import annotations

import contextlib
import dataclasses
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
        self.samples = self.tokens = 0.0
        self.data_wait = self.paused = 0.0
        self.start = time.perf_counter()

    def add_step(self, samples: float, tokens: float) -> None:
        """One optimizer step with these global (summed over ranks) counts."""
        self.steps += 1
        self.samples += samples
        self.tokens += tokens

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

    def record(self, world: int) -> dict:
        """Per-device rates and per-step times of the window."""
        elapsed, steps = self.elapsed(), max(self.steps, 1)
        return {
            "samples_per_sec_per_device": self.samples / world / elapsed,
            "tokens_per_sec_per_device": self.tokens / world / elapsed,
            "data_wait_sec": self.data_wait / steps,
            "step_time_sec": elapsed / steps,
        }


class MetricsLogger:
    """Rank 0 writes; other ranks keep quiet. wandb runs in the configured mode (never logs secrets)."""

    def __init__(self, cfg: RunConfig, run_folder: Path, enabled: bool):
        self.enabled = enabled
        self.writer = MetricsWriter(run_folder / "metrics.jsonl", enabled=enabled)
        self.wandb = None
        if enabled and cfg.logging.wandb.mode != "disabled":
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.wandb.project or cfg.run.project,
                entity=cfg.logging.wandb.entity,
                name=cfg.run.name,
                dir=str(run_folder),
                mode=cfg.logging.wandb.mode,
                config=dataclasses.asdict(cfg),
                resume="allow",
                id=f"{cfg.run.project}-{cfg.run.name}".replace("/", "-"),
            )
        self.progress = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=cfg.train.max_steps, desc="train", unit="step", dynamic_ncols=True)

    def step(self, step: int) -> None:
        if self.progress is not None:
            self.progress.n = step
            self.progress.refresh()

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.writer.write(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        log.info(
            "step %d loss %.4f lr %.2e grad_norm %.3f %.1f samples/s/device %.0f tokens/s/device",
            record["step"],
            record["loss"],
            record["lr"],
            record["grad_norm"],
            record["samples_per_sec_per_device"],
            record["tokens_per_sec_per_device"],
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()
