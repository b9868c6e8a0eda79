"""Checkpoints on local disk or any fsspec URL, committed atomically.

Layout of `<dir>/step_<N>/`:
- DCP shards (`*.distcp`, `.metadata`): model + optimizer, written by every rank;
- `extra.pt` (scheduler, grad scaler, counters) and `rng/rank_<r>.pt`, loaded with `weights_only=True`;
- `data.json` (loader state), `meta.json` (step, counts, consumed shards, dataset versions, config, code
  and library versions), `model/` (what it takes to rebuild the model: tokenizer, model config);
- `COMPLETE`, written last by rank 0 after every rank finished (JSON: step, commit time and every file's size
  and sha256, see `verify.py`).
Local checkpoints are staged in `.step_<N>.partial-*` and renamed into place; remote ones count only once
`COMPLETE` exists. A failed or killed save therefore never replaces the last good checkpoint, and a
committed step is never written again. Every phase of a save ends with an all-reduce of "did any rank
fail" on the checkpoint group, so all ranks retry (or give up) together. Resuming `latest` skips (with
`fallback`) or refuses a committed checkpoint whose files no longer match its marker.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec
from torch.distributed.checkpoint.api import CheckpointException

from open_vlm.checkpoint.collective import CheckpointComm
from open_vlm.checkpoint.dcp_io import (
    AsyncSaver,
    load_model_and_optimizer,
    save_model_and_optimizer,
)
from open_vlm.checkpoint.faults import maybe_crash_before_commit
from open_vlm.checkpoint.files import (
    fsync_dir,
    git_sha,
    library_versions,
    read_bytes,
    torch_bytes,
    torch_load,
    write_bytes,
)
from open_vlm.checkpoint.load_errors import CheckpointError, agree, describe
from open_vlm.checkpoint.retention import STEP_DIR, Retention, step_name
from open_vlm.checkpoint.verify import (
    MARKER,
    CheckpointDamaged,
    describe_damage,
    file_digest,
    list_files,
    verify_checkpoint,
)
from open_vlm.storage import is_remote

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = 3
RETRY_DELAY = 2.0  # seconds before the first retry; doubles each time
# Any error on one rank is shared with the others (they would otherwise wait for it in the next collective);
# DCP's CheckpointException is a BaseException. Storage errors are the expected ones.
FAILURES = (Exception, CheckpointException)


def _hint(reason: str) -> str:
    """What to do about a failure, where the reason says (a full disk)."""
    if os.strerror(errno.ENOSPC) in reason:
        return "; the disk is full: free space (or keep fewer checkpoints: checkpoint.keep_last) and resume"
    return ""


class Checkpointer(Retention):
    """Saves, finds, loads and prunes (`Retention`) the checkpoints under one directory (local path or URL).

    `group`: the checkpoint process group (`collective.new_checkpoint_group`); needed for async saves
    under torchrun, which must not share the training loop's group.
    """

    def __init__(self, directory: str, keep_last: int = 0, group=None, checksums: bool = True):
        self.directory = str(directory).rstrip("/")
        self.keep_last = keep_last
        self.checksums = checksums  # record each file's sha256 in the marker (sizes are always recorded)
        self.group = group
        self.comm = CheckpointComm(group)
        self._reported: set[str] = set()  # damaged checkpoints named in the log already
        self.fs, self.root = fsspec.core.url_to_fs(self.directory)
        self._pending = None  # an async save waiting to be committed
        self._async = AsyncSaver(key=secrets.token_hex(4))  # staging buffers and save plan, reused across saves
        self.protected: str | None = None  # the checkpoint this run resumed from: never pruned
        self.sync_next = False  # an async save failed: write the next one synchronously (with retries)

    def _url(self, name: str) -> str:
        return f"{self.directory}/{name}"

    # --- finding -------------------------------------------------------------------------------------
    def list_complete(self) -> list[tuple[int, str]]:
        """(step, url) of every committed checkpoint, oldest step first."""
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return []
        found = []
        for entry in self.fs.ls(self.root, detail=False):
            name = entry.rstrip("/").split("/")[-1]
            match = STEP_DIR.match(name)
            if match and self.fs.exists(f"{entry.rstrip('/')}/{MARKER}"):
                found.append((int(match.group(1)), self._url(name)))
        return sorted(found)

    def latest(self) -> str | None:
        """The newest complete checkpoint; rank 0 looks and broadcasts, so all ranks agree."""
        return self.comm.from_rank0(lambda: (self._patiently("listing", self.list_complete) or [(None, None)])[-1][1])

    def _patiently(self, what: str, fn: Callable[[], T]) -> T:
        """A storage query (one rank), retried as the save phases are; a CheckpointError after the last try."""
        for attempt in range(1, RETRIES + 1):
            try:
                return fn()
            except Exception as err:  # s3fs lets botocore's own errors through
                if attempt == RETRIES:
                    raise CheckpointError(
                        f"checkpoint: {what} {self.directory} failed {RETRIES} times ({describe(err)})"
                    ) from err
                delay = RETRY_DELAY * 2 ** (attempt - 1)
                log.warning(
                    "checkpoint: %s %s failed (%s); retrying in %.0fs", what, self.directory, describe(err), delay
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def is_committed(self, step: int) -> bool:
        return self.fs.exists(f"{self.root}/{step_name(step)}/{MARKER}")

    def latest_good(self, fallback: bool = True, known: dict[str, list[str]] | None = None) -> str | None:
        """The newest committed checkpoint whose files match its marker (sizes; JSON files parse); collective.

        A damaged one is named with what is wrong; with `fallback` the one before it is tried, else the resume is
        refused. `known`: problems found before (url → problems; a load that failed adds its own), not checked
        or reported again. Raises `CheckpointDamaged` when every committed checkpoint is damaged."""
        known, reported = ({} if known is None else known), self._reported

        def find() -> str | None:
            complete = self._patiently("listing", self.list_complete)
            damaged = []
            for _, url in reversed(complete):
                problems = known[url] if url in known else verify_checkpoint(url)
                if not problems:
                    if damaged:
                        log.warning("resuming from %s, the newest good checkpoint (checkpoint.fallback)", url)
                    return url
                known[url] = problems
                line = describe_damage(url, problems)
                if not fallback:
                    raise CheckpointDamaged(
                        f"{line} (checkpoint.fallback true resumes from the newest good one instead; "
                        "`open-vlm view CKPT --verify` checks a checkpoint)"
                    )
                if url not in reported:
                    reported.add(url)
                    log.error("%s: trying the checkpoint before it (checkpoint.fallback)", line)
                damaged.append(url)
            if damaged:
                raise CheckpointDamaged(f"every committed checkpoint in {self.directory} is damaged ({len(damaged)})")
            return None

        return self.comm.from_rank0(find)

    def check(self, url: str) -> None:
        """Refuse (on every rank) a checkpoint named explicitly whose files do not match its marker."""

        def problems() -> list[str]:
            return verify_checkpoint(url) if self.fs.exists(f"{fsspec.core.url_to_fs(url)[1]}/{MARKER}") else []

        found = self.comm.from_rank0(problems)
        if found:
            raise CheckpointDamaged(describe_damage(url, found))

    # --- saving --------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        model,
        optimizer,
        extra: dict,
        rng: dict,
        data_state: dict,
        meta: dict,
        files: dict[str, bytes],
        async_save: bool = False,
    ) -> str:
        """Write a checkpoint (collective: every rank calls it). Storage errors are retried by all ranks together."""
        self.wait()
        name = step_name(step)
        committed = {}  # rank 0's answer; the check is a storage access like any other phase: retried
        self._together(
            f"checking whether {name} is committed",
            lambda: committed.update(done=self.comm.rank == 0 and self.is_committed(step)),
        )
        if self.comm.broadcast(committed["done"]):
            log.info("step %d is already committed at %s: not writing it again", step, self._url(name))
            return self._url(name)
        if async_save and self.sync_next:
            log.warning("the last async checkpoint failed: writing step %d synchronously", step)
            async_save = False
        self.sync_next = False
        staging = self._staging(name)
        try:
            self._together(f"preparing {name}", lambda: self._prepare(staging, name))
            self._together(
                f"writing the files of {name}",
                lambda: self._write_files(staging, step, extra, rng, data_state, meta, files),
            )
            if async_save:  # shards in DCP's thread, on the checkpoint group; committed by `wait`
                future = self._async.save(staging, model, optimizer, group=self.group)
                self._pending = (future, staging, step)
                return self._url(name)
            self._together(
                f"writing the shards of {name}",
                lambda: save_model_and_optimizer(staging, model, optimizer, group=self.group),
            )
            self._commit_together(staging, step)
        except CheckpointError:
            self._discard(staging)
            raise
        return self._url(name)

    def staged(self) -> None:
        """Block until an async save's copy of the state is made: call before changing the state (an update)."""
        self._async.wait_staged()

    def wait(self) -> bool:
        """Finish (and commit) an async save in flight; collective. False when it failed on some rank."""
        if self._pending is None:
            return True
        future, staging, step = self._pending
        self._pending = None
        error = _attempt(future.result)
        if self.comm.any(error is not None):
            log.error(
                "async checkpoint of step %d failed (%s); the previous checkpoint stays the latest and the next "
                "save is written synchronously",
                step,
                describe(error) if error else "on another rank",
            )
            self.sync_next = True
            self._discard(staging)
            return False
        try:
            self._commit_together(staging, step)
        except CheckpointError:
            self._discard(staging)
            raise
        return True

    def _together(self, what: str, fn: Callable[[], object]) -> None:
        """Run `fn` on every rank; while any rank failed, all retry; after the last try all raise."""
        for attempt in range(1, RETRIES + 1):
            error = _attempt(fn)
            if not self.comm.any(error is not None):
                return
            reason = describe(error) if error else "failed on another rank"
            if attempt == RETRIES:
                raise CheckpointError(
                    f"checkpoint: {what} failed {RETRIES} times ({reason}); the previous checkpoint stays the latest"
                    + _hint(reason)
                )
            delay = RETRY_DELAY * 2 ** (attempt - 1)
            log.warning("checkpoint: %s failed (%s); all ranks retry in %.0fs", what, reason, delay)
            time.sleep(delay)

    def _discard(self, staging: str) -> None:
        """Remove what a failed save left (local staging only: it may be filling the disk); rank 0."""
        if self.comm.rank == 0 and not is_remote(self.directory):
            shutil.rmtree(staging, ignore_errors=True)

    def _staging(self, name: str) -> str:
        if is_remote(self.directory):
            return self._url(name)  # written in place; it counts once COMPLETE exists
        token = self.comm.broadcast(secrets.token_hex(4) if self.comm.rank == 0 else None)
        return os.path.join(self.root, f".{name}.partial-{token}")

    def _prepare(self, staging: str, name: str) -> None:
        if self.comm.rank != 0:
            return
        if not is_remote(self.directory):
            os.makedirs(staging, exist_ok=True)
        elif self.fs.exists(f"{self.root}/{name}"):  # an uncommitted leftover (a killed save): start clean
            self.fs.rm(f"{self.root}/{name}", recursive=True)

    def _write_files(self, staging, step, extra, rng, data_state, meta, files) -> None:
        write_bytes(f"{staging}/rng/rank_{self.comm.rank:05d}.pt", torch_bytes(rng))
        if self.comm.rank != 0:
            return
        write_bytes(f"{staging}/extra.pt", torch_bytes(extra))
        write_bytes(f"{staging}/data.json", json.dumps(data_state).encode())
        full_meta = {**meta, "step": step, "git_sha": git_sha(), "versions": dict(library_versions())}
        write_bytes(f"{staging}/meta.json", json.dumps(full_meta, indent=1, sort_keys=True).encode())
        for rel, data in files.items():
            write_bytes(f"{staging}/{rel}", data)

    def _commit_together(self, staging: str, step: int) -> None:
        maybe_crash_before_commit(step_name(step))  # the atomicity drills (no-op otherwise)
        files = self._record_files(staging, step_name(step))
        self._together(f"committing {step_name(step)}", lambda: self._commit(staging, step, files))
        if self.comm.rank == 0:
            try:
                self.prune()
            except OSError as err:  # the new checkpoint is committed; pruning again next time is enough
                log.warning("pruning old checkpoints failed: %s", err)

    def _record_files(self, staging: str, name: str) -> dict[str, dict]:
        """Size (and sha256) of every file of a written checkpoint, for its marker; collective.

        Rank 0 lists the files; each rank hashes a share of them (its reads run in parallel)."""
        sizes: dict[str, int] = {}

        def listing() -> None:
            sizes.clear()
            if self.comm.rank == 0:
                sizes.update(list_files(staging))

        self._together(f"listing the files of {name}", listing)
        names = self.comm.broadcast(sorted(sizes))
        digests: dict[str, str] = {}

        def hashing() -> None:
            digests.clear()
            if self.checksums:
                mine = names[self.comm.rank :: self.comm.world]
                digests.update({rel: file_digest(f"{staging}/{rel}") for rel in mine})

        self._together(f"checksumming the files of {name}", hashing)
        if self.comm.rank != 0:
            self.comm.all_gather(digests)
            return {}
        merged = {k: v for part in self.comm.all_gather(digests) for k, v in part.items()}
        return {rel: {"size": sizes[rel], **({"sha256": merged[rel]} if rel in merged else {})} for rel in names}

    def _commit(self, staging: str, step: int, files: dict[str, dict]) -> None:
        if self.comm.rank != 0:
            return
        name = step_name(step)
        marker = json.dumps({"step": step, "committed_at": time.time(), "files": files}, indent=0).encode()
        if not is_remote(self.directory):
            target = os.path.join(self.root, name)
            if os.path.isdir(staging):  # not yet renamed (a retry after the rename skips this)
                write_bytes(f"{staging}/{MARKER}", marker)
                fsync_dir(staging)
                if os.path.exists(target):  # not committed (checked in `save`): a stray folder of that name
                    shutil.rmtree(target)
                os.replace(staging, target)
            fsync_dir(self.root)
        else:
            write_bytes(f"{staging}/{MARKER}", marker)
        log.info("saved checkpoint %s", self._url(name))

    # --- loading -------------------------------------------------------------------------------------
    def load(self, ckpt: str, model, optimizer) -> tuple[dict, dict | None, dict]:
        """Restore model + optimizer in place; returns (extra, this rank's rng or None, data_state).

        Collective. Every phase ends with the ranks agreeing (`load_errors.agree`), so a read that fails on one
        rank never leaves the others in a collective: each rank raises the same kind of failure (damage, storage,
        a refused payload, another model)."""
        load_model_and_optimizer(ckpt, model, optimizer, group=self.group, agree=lambda e: agree(self.comm, ckpt, e))
        error = None
        try:
            extra = torch_load(f"{ckpt}/extra.pt")
            rng_url = f"{ckpt}/rng/rank_{self.comm.rank:05d}.pt"
            fs, path = fsspec.core.url_to_fs(rng_url)
            rng = torch_load(rng_url) if fs.exists(path) else None
            data_state = json.loads(read_bytes(f"{ckpt}/data.json"))
        except Exception as err:  # a store's client raises its own types (botocore): judged by `agree`
            error = err
        agree(self.comm, ckpt, error)
        return extra, rng, data_state


def _attempt(fn: Callable[[], object]) -> BaseException | None:
    """Run `fn`; the error it raised, or None. An interrupt DCP wrapped (a second Ctrl-C) is raised, not retried."""
    try:
        fn()
    except FAILURES as err:
        if isinstance(err, CheckpointException):
            for exc, _ in err.failures.values():
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise exc from None
        return err
    return None


def resolve_checkpoint(path: str) -> str:
    """A checkpoint URL from a checkpoint, a checkpoint directory, or a run folder."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(f"{root.rstrip('/')}/{MARKER}"):
        return path.rstrip("/")
    for candidate in (path, f"{path.rstrip('/')}/checkpoints"):
        complete = Checkpointer(candidate).list_complete()
        if complete:
            return complete[-1][1]
    raise FileNotFoundError(f"no complete checkpoint at {path}")


def read_meta(ckpt: str) -> dict:
    return json.loads(read_bytes(f"{ckpt.rstrip('/')}/meta.json"))
