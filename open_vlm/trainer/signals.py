"""Graceful stops: SIGTERM / SIGUSR1 (spot interruption, SageMaker stop) or one Ctrl-C finish the step,
checkpoint and exit 0; a second Ctrl-C aborts.

torchrun forwards SIGTERM to each rank's whole process group and sends SIGKILL `--shutdown-timeout` seconds
later (default 30). DataLoader workers run in a process group of their own (`data/loader.py`), so the signal
reaches the rank alone: it decides, checkpoints, and shuts its workers down itself. On SageMaker the container's
first process (launch/sagemaker_entry.py) signals the ranks itself and SageMaker sends SIGKILL 120 s later; torchrun's
timeout plays no part there.
"""

from __future__ import annotations

import logging
import os
import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

SAGEMAKER_GRACE_S = 120.0  # SageMaker's SIGTERM -> SIGKILL
TORCHRUN_GRACE_S = "30"  # torchrun's default --shutdown-timeout

log = logging.getLogger(__name__)


def stop_grace() -> tuple[float, str]:
    """Seconds from the stop signal to SIGKILL for this process, and what to do when stopping takes too long."""
    shorter = "make steps or saves shorter (e.g. checkpoint.async true)"
    if os.environ.get("OPEN_VLM_STOP_GRACE_S"):  # set by a launcher that signals the ranks itself
        return float(os.environ["OPEN_VLM_STOP_GRACE_S"]), shorter
    if os.environ.get("SM_CURRENT_HOST"):  # inside a SageMaker job, however started
        return SAGEMAKER_GRACE_S, shorter
    grace = float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TORCHRUN_GRACE_S))
    return grace, "raise torchrun --shutdown-timeout or make steps/saves shorter"


class StopRequest:
    """Set by a signal handler; the training loop checks it between steps."""

    def __init__(self):
        self.requested = False
        self.reason = ""
        self.at: float | None = None  # time.monotonic() of the first signal
        self._previous: dict = {}

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if not self.requested:
            self.at = time.monotonic()
        self.requested, self.reason = True, name
        log.warning("%s received: finishing this step, then checkpointing and stopping", name)
