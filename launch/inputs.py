"""What a job reads when it starts, from the same list the trainer checks (`open_vlm.config.validate.reads`):
S3 locations (checked and simulated against the role before submitting, `launch/preflight.py`), local paths
(they must be inside the shipped source), and a user's `model.module` (shipped with the source, or refused).
"""

from __future__ import annotations

import importlib.util
import posixpath
from dataclasses import dataclass
from pathlib import Path

from open_vlm.config.schema import RunConfig
from open_vlm.config.validate import reads, value_at
from open_vlm.errors import ConfigError
from open_vlm.storage import is_remote

SHIPPED = ("open_vlm", "launch", "configs", "tools", "setup.py", "requirements.txt", "README.md")
CONTAINER_PREFIX = "/opt/ml/"  # channels and output: paths that exist only in the job
FOLDERS = ("model.pretrained", "model.tokenizer", "checkpoint.init_from", "checkpoint.resume")  # the rest are files


@dataclass(frozen=True)
class S3Read:
    """An S3 location the job uses. kind: `file` or `folder` (must exist), `shards` (brace patterns, each shard
    must exist), `manifest` (read when there: the role only), `checkpoints` (read, written, pruned; its bucket
    must exist)."""

    key: str  # the config key, for messages
    urls: tuple[str, ...]
    kind: str

    def objects(self) -> list[str]:
        """`bucket/key` resources the job reads (written too, for checkpoints): what the role must be allowed."""
        if self.kind in ("folder", "checkpoints"):  # s3fs asks for the folder's own key too (HEAD) before listing
            return [path for url in self.urls for path in (_path(url), f"{_path(url)}/*")]
        if self.kind != "shards":
            return [_path(url) for url in self.urls]
        from open_vlm.data.shards import expand_urls

        by_folder: dict[str, list[str]] = {}
        for url in expand_urls(list(self.urls)):
            by_folder.setdefault(posixpath.dirname(url), []).append(url)
        ends = [url for urls in by_folder.values() for url in dict.fromkeys((urls[0], urls[-1]))]  # a range's ends
        return [_path(url) for url in ends]

    def buckets(self) -> list[str]:
        return sorted({url.removeprefix("s3://").split("/", 1)[0] for url in self.urls})


def _path(url: str) -> str:
    return url.removeprefix("s3://").rstrip("/")


def s3_reads(cfg: RunConfig) -> list[S3Read]:
    """Every S3 location `train` reads at start with this config (before channels replace any with mounts), and
    the checkpoint folder."""
    from open_vlm.data.shards import expand_urls

    inputs = reads(cfg, "train")
    found = []
    for key in inputs.paths:
        value = value_at(cfg, key)
        if value and str(value).startswith("s3://"):
            found.append(S3Read(key, (value,), "folder" if key in FOLDERS else "file"))
    for key, source in inputs.sources:
        remote = tuple(url for url in source.urls if url.startswith("s3://"))
        if remote:
            found.append(S3Read(f"{key}.urls", remote, "shards"))
        manifest = source.manifest or posixpath.join(posixpath.dirname(expand_urls(source.urls)[0]), "manifest.json")
        if manifest.startswith("s3://"):
            found.append(S3Read(f"{key}.manifest", (manifest,), "manifest"))
    if cfg.checkpoint.dir and cfg.checkpoint.dir.startswith("s3://"):
        found.append(S3Read("checkpoint.dir", (cfg.checkpoint.dir,), "checkpoints"))
    return found


def check_local_reads(cfg: RunConfig, source_root: Path) -> None:
    """Every local path `train` reads must be inside the shipped source (relative) or a container path."""
    inputs = reads(cfg, "train")
    values = [(key, value_at(cfg, key)) for key in inputs.paths]
    for key, source in inputs.sources:
        values += [(f"{key}.urls", url) for url in source.urls] + [(f"{key}.manifest", source.manifest)]
    for key, value in values:
        if not value or is_remote(value) or value.startswith((CONTAINER_PREFIX, "openclip:")):
            continue
        local = value.split("{")[0].rsplit("/", 1)[0] if "{" in value else value
        parts = Path(local).parts
        shipped = bool(parts) and parts[0] in SHIPPED and not Path(value).is_absolute()
        if not shipped or not (source_root / local).exists():
            raise ConfigError(
                f"{key}: '{value}' is a local path the job cannot read; put it on S3 "
                f"(only {', '.join(SHIPPED)} are shipped)"
            )


def user_module(cfg: RunConfig, pinned: set[str], default_image: bool) -> Path | None:
    """The folder (or file) of `model.module`'s top-level package to ship with the source; None when the job has
    it already (it is ours, or installed in the image). `ConfigError` when the job could not import it."""
    name = cfg.model.module
    top = (name or "").split(".")[0]
    if not top or top in SHIPPED:
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(
            f"model.module: cannot find '{top}' here, so the launcher cannot ship it; put the folder holding it on "
            "PYTHONPATH (it is then shipped with the job's source)"
        )
    locations = list(spec.submodule_search_locations or [])
    path = Path(locations[0]) if len(locations) == 1 else Path(spec.origin or "")
    if {"site-packages", "dist-packages"} & set(path.parts):  # pip-installed here: the image must have it
        if _distributions(top) & pinned or not default_image:
            return None
        raise ConfigError(
            f"model.module: '{top}' is installed in this environment ({path}) but not in the job's image; put its "
            "source folder on PYTHONPATH instead (the launcher ships it), or pass --image with it installed"
        )
    if len(locations) > 1 or not (path.is_dir() or path.suffix == ".py"):
        raise ConfigError(f"model.module: '{top}' is not one folder or .py file ({path}); the launcher cannot ship it")
    return path


def _distributions(top: str) -> set[str]:
    import importlib.metadata

    from packaging.utils import canonicalize_name

    return {canonicalize_name(name) for name in importlib.metadata.packages_distributions().get(top, [])}
