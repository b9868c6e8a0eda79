"""Training processes exit when the launcher that started them dies.

torchrun starts each worker in a session of its own, so when the agent is killed (`kill -9`, the OOM killer)
nothing signals the workers: they live on, stuck in a collective, holding memory and GPUs. `watch_launcher`
starts a daemon thread that waits on the parent *process* through a pidfd (PR_SET_PDEATHSIG would fire when
the parent *thread* that forked us exits, which is not the same thing) and ends this process, with its
data-loader workers, when the parent is gone.

A launcher of launchers (launch/sagemaker_entry.py, which runs torchrun) names itself in $OPEN_VLM_WATCH_PID:
the process exits when that one dies too. Inherited at exec, it holds even when both die before this process
has read its parent's pid (a rank still starting Python).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the fallback where pidfds are missing (not Linux, or a kernel before 5.3)
WATCH_PID_ENV = "OPEN_VLM_WATCH_PID"  # a further process to die with (set by launch/sagemaker_entry.py)


def launched_by_torchrun() -> bool:
    """True in a process torchrun started (it sets TORCHELASTIC_RUN_ID for every worker)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def watch_launcher(always: bool = False, parent: int | None = None) -> threading.Thread | None:
    """Under torchrun (or `always`), exit when the parent process dies; returns the watching thread or None.

    `parent`: the parent pid as read first thing at start (default: now). Read after a second of imports, it may
    already be init's, the launcher having died meanwhile."""
    if not (always or launched_by_torchrun()):
        return None  # a plain `python -m open_vlm.train` may outlive its shell (nohup), as it should
    watched = [(os.getppid() if parent is None else parent, True)]
    if os.environ.get(WATCH_PID_ENV, "").isdigit():
        watched.append((int(os.environ[WATCH_PID_ENV]), False))
    threads = [
        threading.Thread(target=_exit_after, args=watch, name="launcher-watch", daemon=True) for watch in watched
    ]
    for thread in threads:
        thread.start()
    return threads[0]


def wait_for_exit(pid: int, parent: bool = True) -> None:
    """Block until process `pid` (our parent, unless `parent` is False) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        return
    except (AttributeError, OSError):  # no pidfds here: poll
        while _running(pid, parent):
            time.sleep(POLL_SECONDS)
        return
    try:
        if parent and os.getppid() != pid:  # re-parented already: `pid` ended (and may now be another process's)
            return
        select.select([fd], [], [])  # a pidfd becomes readable when its process ends
    finally:
        os.close(fd)


def _running(pid: int, parent: bool) -> bool:
    if parent:
        return os.getppid() == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    return True


def _exit_after(pid: int, parent: bool) -> None:
    wait_for_exit(pid, parent)
    log.error("the launcher (pid %d) is gone: exiting, so that this process frees its memory and devices", pid)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a handler mid-write in another thread: exiting matters more than the last line
            pass
    if os.getpgid(0) == os.getpid():  # our own process group (torchrun's workers are): take the loader workers too
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)
