"""Graceful stops: SIGTERM / SIGUSR1 (spot interruption, SageMaker stop) or one Ctrl-C finish the step,
checkpoint and exit 0; a second Ctrl-C aborts.

torchrun forwards SIGTERM to each rank's whole process group and sends SIGKILL `--shutdown-timeout` seconds
later (default 30). DataLoader workers run in a process group of their own (`data/loader.py`), so the signal
reaches the rank alone: it decides, checkpoints, and shuts its workers down itself.
"""

from __future__ import annotations

import logging
import signal
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

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
