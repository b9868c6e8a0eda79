"""Checkpoints on local disk or any fsspec URL, committed atomically.

Layout of `<dir>/step_<N>/`:
- DCP shards (`*.distcp`, `.metadata`): model + optimizer, written by every rank;
- `extra.pt` (scheduler, grad scaler, counters) and `rng/rank_<r>.pt`, loaded with `weights_only=True`;
- `data.json` (loader state), `meta.json` (step, counts, consumed shards, dataset versions, config, code
  and library versions), `model/` (what it takes to rebuild the model: tokenizer, model config);
- `COMPLETE`, written last by rank 0 after every rank finished (JSON: step and commit time).
Local checkpoints are staged in `.step_<N>.partial-*` and renamed into place; remote ones count only once
`COMPLETE` exists. A failed or killed save therefore never replaces the last good checkpoint, and a
committed step is never written again. Every phase of a save ends with an all-reduce of "did any rank
fail" on the checkpoint group, so all ranks retry (or give up) together.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
from torch.distributed.checkpoint.api import CheckpointException

from open_vlm.checkpoint.collective import CheckpointComm
from open_vlm.checkpoint.dcp_io import failure_summary, load_model_and_optimizer, save_model_and_optimizer
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
from open_vlm.storage import is_remote

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")
ASIDE = "abandoned"  # where a rollback moves the checkpoints of the timeline it leaves
RETRIES = 3
RETRY_DELAY = 2.0  # seconds before the first retry; doubles each time
# Any error on one rank is shared with the others (they would otherwise wait for it in the next collective);
# DCP's CheckpointException is a BaseException. Storage errors are the expected ones.
FAILURES = (Exception, CheckpointException)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, even after retries (raised on every rank)."""


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _describe(err: BaseException) -> str:
    if isinstance(err, CheckpointException):
        return failure_summary(err)
    return f"{type(err).__name__}: {err}"


def canonical(url: str) -> tuple:
    """One spelling per location (`a/./b/`, symlinks, `file://`): for comparing checkpoint URLs."""
    fs, path = fsspec.core.url_to_fs(url)
    path = os.path.realpath(path) if not is_remote(url) else path
    return (str(fs.protocol), path.rstrip("/"))


class Checkpointer:
    """Saves, finds, loads and prunes the checkpoints under one directory (local path or URL).

    `group`: the checkpoint process group (`collective.new_checkpoint_group`); needed for async saves
    under torchrun, which must not share the training loop's group.
    """

    def __init__(self, directory: str, keep_last: int = 0, group=None):
        self.directory = str(directory).rstrip("/")
        self.keep_last = keep_last
        self.group = group
        self.comm = CheckpointComm(group)
        self.fs, self.root = fsspec.core.url_to_fs(self.directory)
        self._pending = None  # an async save waiting to be committed
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
        return self.comm.from_rank0(lambda: (self.list_complete() or [(None, None)])[-1][1])

    def is_committed(self, step: int) -> bool:
        return self.fs.exists(f"{self.root}/{step_name(step)}/{MARKER}")

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
        self._together(f"preparing {name}", lambda: self._prepare(staging, name))
        self._together(
            f"writing the files of {name}",
            lambda: self._write_files(staging, step, extra, rng, data_state, meta, files),
        )
        if async_save:  # shards in DCP's thread, on the checkpoint group; committed by `wait`
            future = save_model_and_optimizer(staging, model, optimizer, async_save=True, group=self.group)
            self._pending = (future, staging, step)
            return self._url(name)
        self._together(
            f"writing the shards of {name}",
            lambda: save_model_and_optimizer(staging, model, optimizer, group=self.group),
        )
        self._commit_together(staging, step)
        return self._url(name)

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
                _describe(error) if error else "on another rank",
            )
            self.sync_next = True
            return False
        self._commit_together(staging, step)
        return True

    def _together(self, what: str, fn: Callable[[], object]) -> None:
        """Run `fn` on every rank; while any rank failed, all retry; after the last try all raise."""
        for attempt in range(1, RETRIES + 1):
            error = _attempt(fn)
            if not self.comm.any(error is not None):
                return
            reason = _describe(error) if error else "failed on another rank"
            if attempt == RETRIES:
                raise CheckpointError(
                    f"checkpoint: {what} failed {RETRIES} times ({reason}); the previous checkpoint stays the latest"
                )
            delay = RETRY_DELAY * 2 ** (attempt - 1)
            log.warning("checkpoint: %s failed (%s); all ranks retry in %.0fs", what, reason, delay)
            time.sleep(delay)

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
        self._together(f"committing {step_name(step)}", lambda: self._commit(staging, step))
        if self.comm.rank == 0:
            try:
                self.prune()
            except OSError as err:  # the new checkpoint is committed; pruning again next time is enough
                log.warning("pruning old checkpoints failed: %s", err)

    def _commit(self, staging: str, step: int) -> None:
        if self.comm.rank != 0:
            return
        name = step_name(step)
        marker = json.dumps({"step": step, "committed_at": time.time()}).encode()
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

    # --- retention -----------------------------------------------------------------------------------
    def commit_time(self, url: str) -> float:
        """When a checkpoint was committed (0 for markers older than the commit time)."""
        try:
            return float(json.loads(read_bytes(f"{url}/{MARKER}")).get("committed_at", 0.0))
        except (ValueError, AttributeError):
            return 0.0

    def prune(self) -> None:
        """Keep the `keep_last` most recently committed checkpoints (and the protected one); rank 0."""
        if self.keep_last > 0:
            complete = self.list_complete()
            by_commit = sorted(complete, key=lambda su: (self.commit_time(su[1]), su[0]))
            for _, url in by_commit[: -self.keep_last]:
                if self.protected is None or canonical(url) != canonical(self.protected):
                    self._delete(url)
        if not is_remote(self.directory):  # leftovers of killed saves
            for entry in Path(self.root).glob(".step_*.partial-*"):
                shutil.rmtree(entry, ignore_errors=True)
        else:  # remote saves are written in place: a step folder without its marker is a failed or killed save
            for entry in self.fs.ls(self.root, detail=False):
                entry = entry.rstrip("/")
                if STEP_DIR.match(entry.split("/")[-1]) and not self.fs.exists(f"{entry}/{MARKER}"):
                    self.fs.rm(entry, recursive=True)
                    log.info("removed the leftovers of an uncommitted save: %s", self._url(entry.split("/")[-1]))

    def _delete(self, url: str) -> None:
        """Uncommit first, so that a kill mid-delete never leaves a COMPLETE checkpoint with files missing."""
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(f"{path}/{MARKER}")
        if not is_remote(url):
            fsync_dir(path)
        fs.rm(path, recursive=True)
        log.info("pruned checkpoint %s", url)

    def set_aside_newer(self, step: int, resumed: str | None = None) -> list[str]:
        """Move committed checkpoints of another timeline (past `step`, or at it but not `resumed`) aside; rank 0."""
        # The saves of this run must neither meet them (a committed step is never rewritten) nor be pruned for
        # them, and `resume latest` must not go back to them; they stay in `<dir>/abandoned/` for inspection.
        moved = []
        for later, url in self.list_complete():
            if later < step or (later == step and (resumed is None or canonical(url) == canonical(resumed))):
                continue
            src = f"{self.root}/{step_name(later)}"
            dest = f"{self.root}/{ASIDE}/{step_name(later)}-{time.strftime('%Y%m%d-%H%M%S')}"
            marker = read_bytes(f"{self._url(step_name(later))}/{MARKER}")  # a URL: `src` has no scheme
            self.fs.rm(f"{src}/{MARKER}")  # uncommitted first: a half-finished move is never a checkpoint
            if is_remote(self.directory):
                self._move_remote(src, dest)
            else:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(src, dest)
                fsync_dir(self.root)
            write_bytes(f"{self.directory}/{ASIDE}/{dest.rsplit('/', 1)[1]}/{MARKER}", marker)
            moved.append(url)
        if moved:
            log.warning(
                "starting at step %d: moved the later checkpoints %s aside to %s/%s (another timeline)",
                step,
                ", ".join(u.rsplit("/", 1)[1] for u in moved),
                self.directory,
                ASIDE,
            )
        return moved

    def _move_remote(self, src: str, dest: str) -> None:
        """Copy every object under `src` to `dest`, then delete `src` (object stores have no rename)."""
        # File by file: s3fs's recursive `mv` also copies the folder placeholders it lists, which S3 refuses.
        self.fs.invalidate_cache()
        for path in self.fs.find(src):
            self.fs.copy(path, f"{dest}/{path[len(src) :].lstrip('/')}")
        self.fs.rm(src, recursive=True)

    # --- loading -------------------------------------------------------------------------------------
    def load(self, ckpt: str, model, optimizer) -> tuple[dict, dict | None, dict]:
        """Restore model + optimizer in place; returns (extra, this rank's rng or None, data_state)."""
        load_model_and_optimizer(ckpt, model, optimizer, group=self.group)
        extra = torch_load(f"{ckpt}/extra.pt")
        rng_url = f"{ckpt}/rng/rank_{self.comm.rank:05d}.pt"
        fs, path = fsspec.core.url_to_fs(rng_url)
        rng = torch_load(rng_url) if fs.exists(path) else None
        data_state = json.loads(read_bytes(f"{ckpt}/data.json"))
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
