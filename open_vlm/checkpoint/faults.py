"""Fault injection for the checkpoint drills, driven by environment variables (unset: no effect).

- `OPEN_VLM_CHECKPOINT_FAULT="rank=0,file=meta.json,times=1"`: the first `times` writes on that rank of a
  file whose name ends with `file` raise an OSError (`file=.distcp` hits DCP's shard writes), after
  `after` such writes went through (default 0); with `delay=S` they sleep S seconds instead (a slow
  store). Several faults are separated by `;`.
- `OPEN_VLM_CRASH_BEFORE_COMMIT=step_00000004`: the process dies (exit 137) after that step's files are
  written, before its commit.
- `OPEN_VLM_DISK_FULL_AFTER=BYTES`: `diskfull:///PATH` is the local disk, except that each process can write only
  BYTES through it; the write that passes the limit writes what fits and fails with ENOSPC, as does every later one
  (a disk that filled up). Registered with fsspec by `storage.py` when the variable is set.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time

from fsspec.implementations.local import LocalFileOpener, LocalFileSystem

log = logging.getLogger(__name__)

_hits: dict[int, int] = {}


@functools.cache
def _faults() -> list[dict[str, str]]:
    spec = os.environ.get("OPEN_VLM_CHECKPOINT_FAULT", "")
    return [dict(kv.split("=", 1) for kv in part.split(",") if "=" in kv) for part in spec.split(";") if part]


def maybe_fail_write(url: str) -> None:
    """Raise (or sleep) as `OPEN_VLM_CHECKPOINT_FAULT` says, when it names this rank and file."""
    rank = int(os.environ.get("RANK", "0"))
    for i, fault in enumerate(_faults()):
        if int(fault.get("rank", 0)) != rank or not url.endswith(fault.get("file", "\0")):
            continue
        _hits[i] = _hits.get(i, 0) + 1
        skip = int(fault.get("after", 0))
        if not skip < _hits[i] <= skip + int(fault.get("times", 1)):
            continue
        if "delay" in fault:
            log.warning("injected fault: writing %s takes %ss", url, fault["delay"])
            time.sleep(float(fault["delay"]))
        else:
            log.warning("injected fault: failing the write of %s", url)
            raise OSError(errno.EIO, f"injected fault writing {url}")


def maybe_crash_before_commit(name: str) -> None:
    if os.environ.get("OPEN_VLM_CRASH_BEFORE_COMMIT") == name:
        os._exit(137)


DISK_FULL_ENV = "OPEN_VLM_DISK_FULL_AFTER"
_written = [0]  # bytes this process wrote through `diskfull://`


class _FillingFile(LocalFileOpener):
    """A local file whose writes count against the process's `OPEN_VLM_DISK_FULL_AFTER` bytes."""

    def write(self, data):
        room = int(os.environ.get(DISK_FULL_ENV, "0")) - _written[0]
        if len(data) > room:
            if room > 0:
                super().write(data[:room])
                _written[0] += room
            log.warning("injected fault: the disk is full writing %s", self.path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
        _written[0] += len(data)
        return super().write(data)


class DiskFullFileSystem(LocalFileSystem):
    """`diskfull:///PATH`: the local file system with a disk that fills up (see `OPEN_VLM_DISK_FULL_AFTER`)."""

    protocol = ("diskfull",)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        if "r" in mode:
            return super()._open(path, mode, block_size, **kwargs)
        path = self._strip_protocol(path)
        self.makedirs(self._parent(path), exist_ok=True)
        return _FillingFile(path, mode, fs=self, **kwargs)
