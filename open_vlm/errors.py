"""Errors a user can act on, and the one wrapper every entry point's `main` runs under.

Entry points raise `ConfigError` (exit status 2: a key, value, path or argument to fix) or `DataError` (exit 1:
shards or storage that cannot feed the run); `run_main` prints any failure as one line on stderr. The traceback
is printed only with `OPEN_VLM_DEBUG=1`, and always lands in the run's log file when one is open.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DEBUG_ENV = "OPEN_VLM_DEBUG"
FAILURE_FILE_ENV = "OPEN_VLM_FAILURE_FILE"  # set by launch/sagemaker_entry.py: SageMaker's failure reason file


class OpenVLMError(Exception):
    """A failure with a one-line explanation (the key or URL, the reason, the fix); exit status `exit_code`."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))


class ConfigError(OpenVLMError):
    """A bad config key, value, path or command-line argument (exit status 2)."""

    exit_code = 2


class DataError(OpenVLMError):
    """Shards that exist but cannot feed the run, or storage that cannot be read (exit status 1)."""

    exit_code = 1


def exit_code(err: BaseException) -> int:
    """2 for config problems, 1 for data/runtime ones; other modules' errors may carry their own `exit_code`."""
    code = getattr(err, "exit_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else 1


def one_line(err: BaseException) -> str:
    """The message as one line; an error nobody explained also gets its type and the debug hint."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(getattr(err, "exit_code", None), int):  # written for the user: keep all of it
        return " ".join(lines) or type(err).__name__
    first = f": {lines[0]}" if lines else ""
    return f"{type(err).__name__}{first} ({DEBUG_ENV}=1 shows the traceback)"


@contextmanager
def usage_errors(*types: type[Exception]) -> Iterator[None]:
    """Inside the block, `types` mean the command's arguments are wrong: re-raised as `ConfigError` (exit 2)."""
    try:
        yield
    except types as err:
        raise ConfigError(str(err)) from err


def _log_to_files(err: BaseException, line: str) -> None:
    """Keep the full traceback in the open run log files (a weeks-long run's log should say why it ended)."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    record = logging.LogRecord(
        "open_vlm", logging.ERROR, __file__, 0, "%s", (line,), (type(err), err, err.__traceback__)
    )
    for handler in handlers:
        handler.handle(record)


def report_failure(line: str) -> None:
    """Leave `line` in $OPEN_VLM_FAILURE_FILE (on SageMaker, the job's FailureReason) unless a process, another rank
    say, wrote its reason first: the first failure is usually the cause, the later ones its echoes."""
    path = os.environ.get(FAILURE_FILE_ENV)
    if not path:
        return
    rank = os.environ.get("RANK")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:  # written already (or the folder is gone)
        return
    with os.fdopen(fd, "w") as out:
        out.write(f"{f'rank {rank}: ' if rank else ''}{line}\n")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run an entry point's `main(argv)`; any exception becomes one `error: ...` line and an exit status."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the boundary: every failure becomes one line
        line = one_line(err)
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exc()
        _log_to_files(err, line)
        report_failure(line)
        print(f"error: {line}", file=sys.stderr)
        return exit_code(err)
