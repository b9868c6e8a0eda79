"""Checkpoints on local disk or any fsspec URL, committed atomically.

Layout of `<dir>/step_<N>/`:
- DCP shards (`*.distcp`, `.metadata`): model + optimizer, written by every rank;
- `extra.pt` (scheduler, grad scaler, counters) and `rng/rank_<r>.pt`, loaded with `weights_only=True`;
- `data.json` (loader state), `meta.json` (step, counts, consumed shards, dataset versions, config, code
  and library versions), `model/` (what it takes to rebuild the model: tokenizer, model config);
- `COMPLETE`, written last by rank 0 after every rank finished.
Local checkpoints are staged in `.step_<N>.partial-*` and renamed into place; remote ones count only once
`COMPLETE` exists. A failed or killed save therefore never replaces the last good checkpoint.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import fsspec
import torch
import torch.distributed as dist

from open_vlm.checkpoint.dcp_io import load_model_and_optimizer, save_model_and_optimizer
from open_vlm.storage import is_remote

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")
RETRIES = 3


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _broadcast(value):
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@functools.cache  # the code this process runs does not change under it; saves a subprocess per save
def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache  # ~80 ms of metadata parsing that would otherwise stall every (async) save
def library_versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("open_vlm", "torch", "transformers", "webdataset", "fsspec", "open_clip_torch", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def write_bytes(url: str, data: bytes) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if not is_remote(url):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def read_bytes(url: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path)


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def torch_load(url: str):
    return torch.load(io.BytesIO(read_bytes(url)), weights_only=True, map_location="cpu")


class Checkpointer:
    """Saves, finds, loads and prunes the checkpoints under one directory (local path or URL)."""

    def __init__(self, directory: str, keep_last: int = 0):
        self.directory = str(directory).rstrip("/")
        self.keep_last = keep_last
        self.fs, self.root = fsspec.core.url_to_fs(self.directory)
        self._pending = None  # an async save waiting to be committed
        self.protected: str | None = None  # the checkpoint this run resumed from: never pruned

    def _url(self, name: str) -> str:
        return f"{self.directory}/{name}"

    # --- finding -------------------------------------------------------------------------------------
    def list_complete(self) -> list[tuple[int, str]]:
        """(step, url) of every committed checkpoint, oldest first."""
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
        found = None
        if _rank() == 0:
            complete = self.list_complete()
            found = complete[-1][1] if complete else None
        return _broadcast(found)

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
        """Write a checkpoint (collective: every rank calls it). Retries transient storage errors."""
        self.wait()
        for attempt in range(RETRIES):
            try:
                return self._save_once(step, model, optimizer, extra, rng, data_state, meta, files, async_save)
            except (OSError, RuntimeError) as err:
                if attempt == RETRIES - 1:
                    raise
                delay = 2.0 * 2**attempt
                log.warning("checkpoint step %d failed (%s); retrying in %.0fs", step, err, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _save_once(self, step, model, optimizer, extra, rng, data_state, meta, files, async_save) -> str:
        name = step_name(step)
        remote = is_remote(self.directory)
        if remote:
            target = self._url(name)
            if _rank() == 0 and self.fs.exists(f"{self.root}/{name}/{MARKER}"):
                self.fs.rm(f"{self.root}/{name}/{MARKER}")  # uncommit first: it is being replaced
            staging = target
        else:
            token = _broadcast(secrets.token_hex(4) if _rank() == 0 else None)
            staging = os.path.join(self.root, f".{name}.partial-{token}")
            if _rank() == 0:
                os.makedirs(staging, exist_ok=True)
        _barrier()
        future = save_model_and_optimizer(staging, model, optimizer, async_save=async_save)
        write_bytes(f"{staging}/rng/rank_{_rank():05d}.pt", torch_bytes(rng))
        if _rank() == 0:
            write_bytes(f"{staging}/extra.pt", torch_bytes(extra))
            write_bytes(f"{staging}/data.json", json.dumps(data_state).encode())
            full_meta = {**meta, "step": step, "git_sha": git_sha(), "versions": dict(library_versions())}
            write_bytes(f"{staging}/meta.json", json.dumps(full_meta, indent=1, sort_keys=True).encode())
            for rel, data in files.items():
                write_bytes(f"{staging}/{rel}", data)
        self._pending = (future, staging, name)
        if future is None:
            self.wait()
        return self._url(name)

    def wait(self) -> None:
        """Finish (and commit) a save in flight; collective."""
        if self._pending is None:
            return
        future, staging, name = self._pending
        self._pending = None
        if future is not None:
            future.result()
        _barrier()
        if os.environ.get("OPEN_VLM_CRASH_BEFORE_COMMIT") == name:  # fault injection for the atomicity tests
            os._exit(137)
        if _rank() == 0:
            self._commit(staging, name)
            self.prune()
        _barrier()

    def _commit(self, staging: str, name: str) -> None:
        write_bytes(f"{staging}/{MARKER}", name.encode())
        if not is_remote(self.directory):
            target = os.path.join(self.root, name)
            if os.path.exists(target):  # re-saving a step after a resume: swap, then drop the old one
                old = f"{target}.old-{secrets.token_hex(4)}"
                os.replace(target, old)
                os.replace(staging, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(staging, target)
        log.info("saved checkpoint %s", self._url(name))

    def prune(self) -> None:
        if self.keep_last <= 0:
            return
        complete = self.list_complete()
        for _, url in complete[: -self.keep_last]:
            if url != self.protected:
                fs, path = fsspec.core.url_to_fs(url)
                fs.rm(path, recursive=True)
                log.info("pruned checkpoint %s", url)
        if not is_remote(self.directory):  # leftovers of killed saves
            for entry in Path(self.root).glob(".step_*.partial-*"):
                shutil.rmtree(entry, ignore_errors=True)

    # --- loading -------------------------------------------------------------------------------------
    def load(self, ckpt: str, model, optimizer) -> tuple[dict, dict | None, dict]:
        """Restore model + optimizer in place; returns (extra, this rank's rng or None, data_state)."""
        load_model_and_optimizer(ckpt, model, optimizer)
        extra = torch_load(f"{ckpt}/extra.pt")
        rng_url = f"{ckpt}/rng/rank_{_rank():05d}.pt"
        fs, path = fsspec.core.url_to_fs(rng_url)
        rng = torch_load(rng_url) if fs.exists(path) else None
        data_state = json.loads(read_bytes(f"{ckpt}/data.json"))
        return extra, rng, data_state


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
