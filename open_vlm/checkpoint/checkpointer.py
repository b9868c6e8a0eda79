"""Checkpoints on local disk or any fsspec URL, committed atomically.

Layout of `<dir>/step_<N>/`: `model/` (HF save_pretrained: loads in stock transformers), `tokenizer/`,
`train_state.pt` (optimizer, scheduler, RNG; loaded with weights_only=True), `data.json` (loader state),
`meta.json` (step, counts, consumed shards, config, versions), and `COMPLETE`, written last. Local
checkpoints are staged in a temporary folder and renamed into place, so a crash leaves no partial
`step_<N>`; remote ones count only once `COMPLETE` exists.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import torch

from open_vlm.storage import is_remote, local_dir

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, *rest = state["python"]
    random.setstate((version, tuple(keys), *rest))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "webdataset", "fsspec", "open_clip_torch", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


class Checkpointer:
    """Saves and finds checkpoints under one directory (local path or URL)."""

    def __init__(self, directory: str, keep_last: int = 0):
        self.directory = str(directory).rstrip("/")
        self.keep_last = keep_last
        self.fs, self.root = fsspec.core.url_to_fs(self.directory)

    def _url(self, name: str) -> str:
        return f"{self.directory}/{name}"

    def list_complete(self) -> list[tuple[int, str]]:
        """(step, url) of every committed checkpoint, oldest first."""
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
        complete = self.list_complete()
        return complete[-1][1] if complete else None

    def save(self, step: int, *, model, tokenizer, train_state: dict, data_state: dict, meta: dict) -> str:
        """Write one checkpoint and commit it; returns its URL. Never touches the previous ones until done."""
        name = step_name(step)
        staging_parent = self.root if not is_remote(self.directory) else None
        if staging_parent:
            os.makedirs(staging_parent, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=staging_parent))
        try:
            model.save_pretrained(str(staging / "model"), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(staging / "tokenizer"))
            torch.save(train_state, staging / "train_state.pt")
            (staging / "data.json").write_text(json.dumps(data_state))
            meta = {**meta, "step": step, "git_sha": git_sha(), "versions": library_versions()}
            (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            (staging / MARKER).write_text(str(step))
            url = self._url(name)
            if is_remote(self.directory):
                self._upload(staging, url)
            else:
                target = Path(self.root) / name
                if target.exists():  # re-saving a step (e.g. after a resume): replace it whole
                    shutil.rmtree(target)
                os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        log.info("saved checkpoint %s", url)
        self.prune(protect=url)
        return url

    def _upload(self, staging: Path, url: str) -> None:
        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(f"{path}/{MARKER}"):
            fs.rm(f"{path}/{MARKER}")  # uncommit first: a half-replaced checkpoint must not count
        for file in sorted(staging.rglob("*")):
            rel = file.relative_to(staging).as_posix()
            if file.is_file() and rel != MARKER:
                fs.put_file(str(file), f"{path}/{rel}")
        fs.put_file(str(staging / MARKER), f"{path}/{MARKER}")  # the commit

    def prune(self, protect: str | None = None) -> None:
        if self.keep_last <= 0:
            return
        complete = self.list_complete()
        for _, url in complete[: -self.keep_last]:
            if url != protect:
                fs, path = fsspec.core.url_to_fs(url)
                fs.rm(path, recursive=True)
                log.info("pruned checkpoint %s", url)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint URL from a checkpoint, a checkpoint directory, or a run folder."""
    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(f"{root.rstrip('/')}/{MARKER}"):
        return path.rstrip("/")
    for candidate in (path, f"{path.rstrip('/')}/checkpoints"):
        latest = Checkpointer(candidate).latest()
        if latest:
            return latest
    raise FileNotFoundError(f"no complete checkpoint at {path}")


def read_meta(ckpt: str) -> dict:
    with fsspec.open(f"{ckpt}/meta.json", "r") as f:
        return json.load(f)


def load_train_state(ckpt: str) -> tuple[dict, dict]:
    """(train_state, data_state) of a checkpoint; tensors loaded with weights_only=True."""
    folder = local_dir(ckpt)
    train_state = torch.load(folder / "train_state.pt", weights_only=True, map_location="cpu")
    data_state = json.loads((folder / "data.json").read_text())
    return train_state, data_state
