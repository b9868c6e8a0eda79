"""Storage helpers over fsspec: local paths and URLs (s3://, gs://, ...) alike."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import tempfile
from pathlib import Path

import fsspec

if os.environ.get("OPEN_VLM_DISK_FULL_AFTER"):  # the disk-full drill's file system (checkpoint/faults.py)
    fsspec.register_implementation("diskfull", "open_vlm.checkpoint.faults.DiskFullFileSystem", clobber=True)


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def probe(url: str, connect_s: float = 5, read_s: float = 10) -> None:
    """Ask a remote URL's store once, with short timeouts and no retries: a store that does not answer (wrong
    endpoint or credentials, a black-holed network) raises within seconds, where its client's own retries take
    minutes. Whether the path exists does not matter."""
    fs, path = fsspec.core.url_to_fs(url)
    if "s3" in fs.protocol:
        options = dict(fs.storage_options)
        timeouts = {"connect_timeout": connect_s, "read_timeout": read_s, "retries": {"max_attempts": 1}}
        options["config_kwargs"] = {**options.get("config_kwargs", {}), **timeouts}
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
        fs.retries = 1  # s3fs's own retry loop, over botocore's
    fs.exists(path)


def local_path(url: str) -> str:
    """The filesystem path of a local spelling (`file://...`, `~/...`, a plain path), as fsspec reads it."""
    return os.path.expanduser(str(url).removeprefix("file://"))


def local_dir(url: str) -> Path:
    """A local directory holding `url`'s files: the path itself, or a cached download of a remote folder."""
    if not is_remote(url):
        return Path(local_path(url))
    cache_root = Path(os.environ.get("OPEN_VLM_CACHE", Path(tempfile.gettempdir()) / "open_vlm_cache"))
    target = cache_root / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    if not (target / ".complete").exists():
        fs, path = fsspec.core.url_to_fs(url)
        tmp = Path(tempfile.mkdtemp(dir=cache_root.mkdir(parents=True, exist_ok=True) or cache_root))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
        (target / ".complete").touch()
    return target


def write_atomic(url: str, data: bytes) -> None:
    """Write `data` to `url` so that readers see the old file or the new one, never a part (S3: one PUT)."""
    if is_remote(url):
        with fsspec.open(url, "wb") as f:
            f.write(data)
        return
    path = Path(local_path(url))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique even across machines sharing a filesystem (pids repeat between containers).
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_yaml_mapping(path: str) -> dict:
    """A YAML file (local or URL) whose top level is a mapping; FileNotFoundError / ValueError otherwise."""
    import yaml

    try:
        with fsspec.open(path, "r") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data
