"""What a failure to load a checkpoint means, decided alike on every rank.

A resume reads per-rank files (the DCP metadata, the RNG state) around DCP's own collective load. A rank whose
read fails must not leave the others waiting in a collective, so every phase of reading ends with `agree`: the
ranks gather their errors and all raise the same kind, named after the first rank that failed:

- `unsafe`: a payload refused (`UnsafeCheckpoint`): never passed over, the run stops;
- `mismatch`: another model's weights (`WeightsMismatch`): refused, as on every resume;
- `storage`: an I/O error that is the storage's, not the files' (a connection reset, EIO, out of memory):
  `CheckpointError`, the run stops and a relaunch retries; falling back would throw away good steps;
- `damage`: bytes that are no checkpoint (garbled, cut, missing): `CheckpointDamaged`, which
  `checkpoint.fallback` passes over for the checkpoint before.
"""

from __future__ import annotations

from torch.distributed.checkpoint.api import CheckpointException

from open_vlm.checkpoint.collective import CheckpointComm
from open_vlm.checkpoint.dcp_io import WeightsMismatch, failure_summary
from open_vlm.checkpoint.dcp_safe import UnsafeCheckpoint
from open_vlm.checkpoint.verify import CheckpointDamaged

# Packages whose exceptions are the storage's (a remote store's client), never a file's content.
STORAGE_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "gcsfs", "adlfs", "azure")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (every retry failed) or read (the storage failed, not the files)."""


def kind(err: BaseException) -> str:
    """unsafe | mismatch | storage | damage (see the module's docstring)."""
    if isinstance(err, UnsafeCheckpoint):
        return "unsafe"
    if isinstance(err, WeightsMismatch):
        return "mismatch"
    if isinstance(err, MemoryError) or "out of memory" in str(err):
        return "storage"
    if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return "storage"
    if type(err).__module__.split(".")[0] in STORAGE_CLIENTS:  # botocore's endpoint or throttling errors, ...
        return "storage"
    return "damage"


def describe(err: BaseException) -> str:
    """One line for a failed read or write (a DCP exception: one part per failed rank)."""
    if isinstance(err, CheckpointException):
        return failure_summary(err)
    return f"{type(err).__name__}: {err}"


def failure(ckpt: str, what: str, why: str, rank: int | None) -> Exception:
    """The exception of kind `what` for a load of `ckpt` that failed (on `rank`, when the ranks are several)."""
    where = f" on rank {rank}" if rank is not None else ""
    if what == "unsafe":
        return UnsafeCheckpoint(why)
    if what == "mismatch":
        return WeightsMismatch(why)
    if what == "storage":
        return CheckpointError(
            f"checkpoint {ckpt}: reading it failed{where} ({why}); the storage failed, not (as far as can be told) "
            "the checkpoint: run again to retry"
        )
    error = CheckpointDamaged(
        f"checkpoint {ckpt} cannot be read{where} ({why}); `open-vlm view {ckpt} --verify` checks its files; "
        "resume from an older one with --checkpoint.resume PATH"
    )
    error.reason = f"cannot be read{where} ({why})"
    return error


def agree(comm: CheckpointComm, ckpt: str, error: BaseException | None) -> None:
    """Collective: when any rank's `error` is set, every rank raises the first failing rank's kind of failure (a
    rank raises its own exception when it is that rank)."""
    mine = None if error is None else (kind(error), describe(error))
    failed = [(rank, got) for rank, got in enumerate(comm.all_gather(mine)) if got is not None]
    if not failed:
        return
    rank, (what, why) = failed[0]
    if error is not None and rank == comm.rank and what in ("unsafe", "mismatch"):
        raise error
    raise failure(ckpt, what, why, rank if comm.world > 1 else None) from error
