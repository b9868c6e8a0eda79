"""The small files of a checkpoint (JSON, `weights_only` torch files, markers), local or any fsspec URL."""

from __future__ import annotations

import functools
import io
import logging
import os
import subprocess
from pathlib import Path

import fsspec
import torch

from open_vlm.checkpoint.faults import maybe_fail_write
from open_vlm.storage import is_remote, local_path

log = logging.getLogger(__name__)


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file; a local one is fsynced, so a commit after it never points at lost bytes."""
    maybe_fail_write(url)
    if is_remote(url):
        fs, path = fsspec.core.url_to_fs(url)
        with fs.open(path, "wb") as f:
            f.write(data)
        return
    path = local_path(url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: str) -> None:
    """Make a rename or an unlink in a local directory durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(url: str) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.cat_file(path)


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def torch_load(url: str):
    """A torch file of plain data (tensors, numbers, containers): never an arbitrary pickle (`UnsafeCheckpoint`)."""
    from open_vlm.checkpoint.dcp_safe import refusing_pickles

    with refusing_pickles(url):
        return torch.load(io.BytesIO(read_bytes(url)), weights_only=True, map_location="cpu")


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
