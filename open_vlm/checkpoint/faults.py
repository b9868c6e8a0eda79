"""Fault injection for the checkpoint drills, driven by environment variables (unset: no effect).

- `OPEN_VLM_CHECKPOINT_FAULT="rank=0,file=meta.json,times=1"`: the first `times` writes on that rank of a
  file whose name ends with `file` raise an OSError (`file=.distcp` hits DCP's shard writes); with
  `delay=S` they sleep S seconds instead (a slow store).
- `OPEN_VLM_CRASH_BEFORE_COMMIT=step_00000004`: the process dies (exit 137) after that step's files are
  written, before its commit.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time

log = logging.getLogger(__name__)

_hits: dict[str, int] = {}


@functools.cache
def _fault() -> dict[str, str] | None:
    spec = os.environ.get("OPEN_VLM_CHECKPOINT_FAULT")
    if not spec:
        return None
    return dict(part.split("=", 1) for part in spec.split(",") if "=" in part)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def maybe_fail_write(url: str) -> None:
    """Raise (or sleep) as `OPEN_VLM_CHECKPOINT_FAULT` says, when it names this rank and file."""
    fault = _fault()
    if fault is None or int(fault.get("rank", 0)) != _rank() or not url.endswith(fault.get("file", "\0")):
        return
    key = fault["file"]
    _hits[key] = _hits.get(key, 0) + 1
    if _hits[key] > int(fault.get("times", 1)):
        return
    if "delay" in fault:
        time.sleep(float(fault["delay"]))
        return
    log.warning("injected fault: failing the write of %s", url)
    raise OSError(errno.EIO, f"injected fault writing {url}")


def maybe_crash_before_commit(name: str) -> None:
    if os.environ.get("OPEN_VLM_CRASH_BEFORE_COMMIT") == name:
        os._exit(137)
