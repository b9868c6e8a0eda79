"""A watchdog for hung loader workers: a worker that makes no progress for `data.worker_timeout_s` is named,
with the shard it was reading, instead of the run hanging forever (a frozen S3 endpoint, a stuck NFS mount).

Workers write a heartbeat (a monotonic timestamp, comparable across processes on one machine) and the URL they
are reading into shared memory; the main process, while it waits for a chunk, checks them.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time

URL_BYTES = 512


class WorkerHung(RuntimeError):
    """A loader worker stopped making progress."""


class WorkerWatch:
    """Heartbeats and current URLs of `workers` loader workers, in shared memory."""

    def __init__(self, workers: int, timeout_s: float, context: str | None = None):
        ctx = multiprocessing.get_context(context)
        self.timeout_s = timeout_s
        self.beats = ctx.RawArray(ctypes.c_double, max(1, workers))
        self.urls = ctx.RawArray(ctypes.c_char, max(1, workers) * URL_BYTES)
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        for w in range(len(self.beats)):
            self.beats[w] = now

    def beat(self, worker: int, url: str | None = None) -> None:
        """Called by worker `worker` whenever it makes progress (and with the URL it starts reading)."""
        self.beats[worker] = time.monotonic()
        if url is not None:
            data = url.encode("utf-8", "replace")[: URL_BYTES - 1]
            start = worker * URL_BYTES
            self.urls[start : start + len(data) + 1] = data + b"\0"

    def url(self, worker: int) -> str:
        start = worker * URL_BYTES
        return self.urls[start : start + URL_BYTES].split(b"\0", 1)[0].decode("utf-8", "replace")

    def check(self, worker: int) -> None:
        """Raise `WorkerHung` if worker `worker` (the one whose chunk is awaited) is silent past the timeout."""
        silent = time.monotonic() - self.beats[worker]
        if silent > self.timeout_s:
            where = self.url(worker) or "no shard yet"
            raise WorkerHung(
                f"data worker {worker} made no progress for {silent:.0f}s while reading {where} "
                f"(data.worker_timeout_s {self.timeout_s:g}): is that storage reachable? The run stops here; "
                "resume from the last checkpoint once it is"
            )
