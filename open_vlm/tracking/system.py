"""System stats for the metrics: CPU and GPU utilisation and memory, where this machine can tell."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class SystemStats:
    """Samples utilisation since the previous sample (the first covers the time since construction)."""

    def __init__(self, device: torch.device):
        self.device = device
        try:
            import psutil
        except ImportError:  # a dependency of wandb, so normally present
            psutil = None
            log.info("psutil is not installed: no CPU / memory stats")
        self.psutil = psutil
        self.process = psutil.Process() if psutil else None
        if psutil:  # prime the counters: cpu_percent reports the time since its previous call
            psutil.cpu_percent(interval=None)
            self.process.cpu_percent(interval=None)

    def sample(self) -> dict[str, float]:
        """`system/...` numbers: what is not available here is left out."""
        stats: dict[str, float] = {}
        if self.psutil is not None:
            stats["system/cpu_percent"] = self.psutil.cpu_percent(interval=None)
            stats["system/process_cpu_percent"] = self.process.cpu_percent(interval=None)
            stats["system/memory_percent"] = self.psutil.virtual_memory().percent
            stats["system/process_memory_gb"] = self.process.memory_info().rss / 2**30
        if self.device.type == "cuda":
            stats["system/gpu_memory_allocated_gb"] = torch.cuda.memory_allocated(self.device) / 2**30
            stats["system/gpu_memory_reserved_gb"] = torch.cuda.memory_reserved(self.device) / 2**30
            try:  # needs NVIDIA's management library (pynvml / amdsmi)
                stats["system/gpu_utilization_percent"] = float(torch.cuda.utilization(self.device))
            except Exception:  # not installed, or not supported by the driver
                pass
        return stats
