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
TORCHRUN_DEFAULT_GRACE = 30.0  # torchrun's default --shutdown-timeout

SAGEMAKER_GRACE_S = 120.0  # SageMaker's SIGTERM -> SIGKILL

log = logging.getLogger(__name__)


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


def launcher_grace(pid: int | None = None) -> float | None:
    """The `--shutdown-timeout` on the command line of process `pid` (default: our parent, torchrun's agent)."""
    # torchrun passes neither the flag nor its value to the workers: its command line is the one place to read it.
    try:
        with open(f"/proc/{os.getppid() if pid is None else pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name in ("--shutdown-timeout", "--shutdown_timeout"):
            try:
                return float(value or args[i + 1])
            except (ValueError, IndexError):
                return None
    return None


def stop_grace(configured: float = 0.0, under_torchrun: bool = False) -> tuple[float, str]:
    """Seconds from a stop signal to SIGKILL for this process, and what to do when stopping takes too long.

    `train.shutdown_timeout` when set; else a launcher's own (`OPEN_VLM_STOP_GRACE_S`, SageMaker's 120 s); else
    torchrun's `--shutdown-timeout` (read from the agent's command line), its environment variable, its default."""
    shorter = "make steps or saves shorter (e.g. checkpoint.async true)"
    if configured > 0:
        return configured, f"raise train.shutdown_timeout (and the launcher's grace) or {shorter}"
    if os.environ.get("OPEN_VLM_STOP_GRACE_S"):  # set by a launcher that signals the ranks itself
        return float(os.environ["OPEN_VLM_STOP_GRACE_S"]), shorter
    if os.environ.get("SM_CURRENT_HOST"):  # inside a SageMaker job, however started
        return SAGEMAKER_GRACE_S, shorter
    grace = launcher_grace() if under_torchrun else None
    if grace is None:
        grace = float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TORCHRUN_DEFAULT_GRACE))
    return grace, f"raise torchrun --shutdown-timeout or {shorter}"
