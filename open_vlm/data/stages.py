"""Where the loader's time goes: seconds per stage, counted only when profiling (`open-vlm data bench --profile`).

Workers count `read` (tar bytes of the sample), `decode` (image and text), `process` (the task's processor:
tokenize, augment) and `pack` (the step's chunk); they send their counts with each chunk. The main process counts
`wait` (blocked on the workers), `merge` (the step's chunks in slot order), `collate` and `pin`.
"""

from __future__ import annotations

import time
from collections import Counter

WORKER_STAGES = ("read", "decode", "process", "pack")
MAIN_STAGES = ("wait", "merge", "collate", "pin")


class StageClock:
    """Wall seconds per stage between laps; does nothing when not `enabled` (the hot path pays one branch)."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.seconds: Counter[str] = Counter()
        self._since = 0.0

    def start(self) -> None:
        if self.enabled:
            self._since = time.perf_counter()

    def lap(self, stage: str) -> None:
        """Count the time since the last lap (or start) to `stage`."""
        if self.enabled:
            now = time.perf_counter()
            self.seconds[stage] += now - self._since
            self._since = now

    def take(self) -> dict[str, float]:
        """The counts so far, reset."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out
