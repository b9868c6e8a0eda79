"""DataLoader worker processes: kept out of the trainer's stop signals, tied to its life, and the main process's
share of the work run on one thread."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator

import torch

_RELEASED: list = []  # every loader's "workers may stop" flag, raised at exit (see `worker_init`)


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first
def _release_workers_at_exit() -> None:
    for flag in _RELEASED:
        flag.value = 1


def worker_init(released, worker_id: int) -> None:
    """Keep DataLoader workers out of the stop signals meant for the trainer, and tie their life to it.

    A stop signal is the trainer's to act on (finish the step, checkpoint); a worker that died from it would fail
    the rank instead. torchrun and a terminal's Ctrl-C signal a process group: workers live in a group of their own.
    Slurm, systemd or `pkill` signal every process: a worker ignores SIGTERM / SIGINT until `released` is raised
    (the loader is closed, or the trainer is exiting), then any terminate() ends it as usual. A trainer killed
    outright takes its workers along through the kernel's parent-death signal (even one blocked in a read).
    """
    os.setpgrp()

    def on_stop(signum, frame) -> None:
        if released.value:
            os._exit(0)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    if sys.platform == "linux":
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the trainer died before the line above: nobody is left to signal us
            os._exit(1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the main process's share (merging, collating: copies of a few MB) on one intra-op thread.

    A parallel copy wakes torch's other OpenMP threads, which then spin waiting for more work: measured, that
    spinning cost 3-4 ms of CPU per sample, taken from the decoding workers (bench/README.md, loader).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def as_is(chunk: dict) -> dict:
    """The DataLoader's collate_fn: chunks travel as packed (its default would turn every numpy array into a
    tensor, each then sent through a shared-memory segment of its own)."""
    return chunk


def release_flag(context: str | None):
    """A shared "these workers may stop" flag for one loader's workers, raised at exit if not before."""
    flag = multiprocessing.get_context(context).RawValue(ctypes.c_byte, 0)
    _RELEASED.append(flag)
    return flag


def release(flag) -> None:
    """Let the workers of a closed loader stop on any signal."""
    flag.value = 1
    if flag in _RELEASED:
        _RELEASED.remove(flag)
