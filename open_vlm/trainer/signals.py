"""Graceful stops: SIGTERM / SIGUSR1 (spot interruption, SageMaker stop) or one Ctrl-C finish the step,
checkpoint and exit 0; a second Ctrl-C aborts.

torchrun forwards SIGTERM to each rank's whole process group and sends SIGKILL `--shutdown-timeout` seconds
later (default 30). DataLoader workers run in a process group of their own (`data/loader.py`), so the signal
reaches the rank alone: it decides, checkpoints, and shuts its workers down itself.
"""

from __future__ import annotations

import logging
import os
import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
TORCHRUN_DEFAULT_GRACE = 30.0

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


def shutdown_grace(configured: float, under_torchrun: bool) -> float:
    """Seconds from a stop signal to SIGKILL: `train.shutdown_timeout`, else torchrun's, else the default."""
    if configured > 0:
        return configured
    from_launcher = launcher_grace() if under_torchrun else None
    if from_launcher is not None:
        return from_launcher
    return float(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", TORCHRUN_DEFAULT_GRACE))
