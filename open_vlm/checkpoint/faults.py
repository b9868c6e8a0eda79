"""Fault injection for the checkpoint drills, driven by environment variables (unset: no effect).

- `OPEN_VLM_CHECKPOINT_FAULT="rank=0,file=meta.json,times=1"`: the first `times` writes on that rank of a
  file whose name ends with `file` raise an OSError (`file=.distcp` hits DCP's shard writes), after
  `after` such writes went through (default 0); with `delay=S` they sleep S seconds instead (a slow
  store). Several faults are separated by `;`.
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
