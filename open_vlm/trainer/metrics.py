"""Metrics: one record per logged step to metrics.jsonl, the console and (optionally) wandb."""

from __future__ import annotations

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
    """Counts samples, tokens and data-wait time between two logged steps."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.samples = self.tokens = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


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
