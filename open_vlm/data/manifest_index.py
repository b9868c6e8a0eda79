"""A binary index beside `manifest.json`: what a training process needs from a manifest, loadable in milliseconds.

Parsing a million-shard JSON takes seconds and hundreds of MB of Python objects in every process. The index
(`<name>.index.npz`, plain numpy arrays) holds the sample counts, the URL names under one base, the dataset
version and the URL patterns the manifest was built from; it records the JSON's size and mtime (or ETag) and
is rebuilt when they no longer match. A manifest whose directory is read-only gets its index in the local cache
(`$OPEN_VLM_CACHE/manifests`). Sizes and checksums stay in the JSON (tools read it; training does not need them).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path

import fsspec
import numpy as np

from open_vlm.data.manifest import ShardManifest, UrlColumn, read_manifest
from open_vlm.data.offsets import SampleOffsets, offsets_url, offsets_valid
from open_vlm.storage import is_remote, write_atomic

log = logging.getLogger(__name__)

INDEX_FORMAT = "open_vlm.manifest-index/1"


def view_name(patterns: list[str]) -> str:
    """The name of the index of a source that takes a subset (or another order) of a manifest's shards."""
    return hashlib.sha1(json.dumps(list(patterns)).encode()).hexdigest()[:10]


def index_url(manifest_url: str, view: str = "") -> str:
    stem = manifest_url[: -len(".json")] if manifest_url.endswith(".json") else manifest_url
    return f"{stem}.index{'-' + view if view else ''}.npz"


def _cache_path(manifest_url: str, view: str = "") -> Path:
    root = Path(os.environ.get("OPEN_VLM_CACHE", Path(tempfile.gettempdir()) / "open_vlm_cache"))
    name = hashlib.sha1(manifest_url.encode()).hexdigest()[:20] + (f"-{view}" if view else "")
    return root / "manifests" / f"{name}.index.npz"


def identity_of(manifest_url: str) -> str | None:
    """Size and mtime (local) or ETag (remote) of the manifest JSON; None when it does not exist."""
    fs, path = fsspec.core.url_to_fs(manifest_url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    return f"{info.get('size')}:{stamp}"


def _encode(manifest: ShardManifest, identity: str, patterns: list[str] | None, offsets: bool) -> bytes:
    from open_vlm.data.version import manifest_version

    buf = io.BytesIO()
    np.savez(
        buf,
        offset_starts=manifest.offset_starts if offsets else np.zeros(0, dtype=np.int64),
        format=np.array(INDEX_FORMAT),
        identity=np.array(identity),
        patterns=np.array(json.dumps(patterns)),
        version=np.array(manifest_version(manifest)),
        base=np.array(manifest.urls.base),
        names=manifest.urls.names,
        counts=manifest.counts.astype(np.int32) if manifest.counts.max(initial=0) < 2**31 else manifest.counts,
    )
    return buf.getvalue()


def write_index(manifest: ShardManifest, manifest_url: str, patterns: list[str] | None = None, view: str = "") -> None:
    """Write the index of `manifest` (the one at `manifest_url`, or the `view` a source takes of it) beside it,
    else in the local cache."""
    identity = identity_of(manifest_url)
    if identity is None:
        return
    has_offsets = offsets_valid(manifest_url, identity, _offsets_samples(manifest, manifest_url))
    data = _encode(manifest, identity, patterns, has_offsets)
    target = index_url(manifest_url, view)
    try:
        write_atomic(target, data)
        if not is_remote(target):
            return
    except OSError as err:
        log.info("manifest index not written beside %s (%s); caching it locally", manifest_url, err)
    write_atomic(str(_cache_path(manifest_url, view)), data)


def _offsets_samples(manifest: ShardManifest, manifest_url: str) -> int:
    """How many offsets the manifest's file must hold: every sample of the whole manifest (a view is a subset)."""
    if manifest._starts is None:  # the manifest itself
        return manifest.num_samples
    full = load_index(manifest_url)
    return full[0].num_samples if full else -1


def _load(path_or_bytes, identity: str, manifest_url: str) -> tuple[ShardManifest, list[str] | None] | None:
    try:
        npz = np.load(io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes)
        if str(npz["format"]) != INDEX_FORMAT or str(npz["identity"]) != identity:
            return None
        urls = UrlColumn(str(npz["base"]), npz["names"])
        manifest = ShardManifest.from_columns(urls, npz["counts"], version=str(npz["version"]))
        if "offset_starts" in npz.files and len(npz["offset_starts"]) == len(manifest):
            manifest.sample_offsets = SampleOffsets(offsets_url(manifest_url), npz["offset_starts"])
        return manifest, json.loads(str(npz["patterns"]))
    except Exception as err:  # an index is a cache: damaged (half-written, truncated), it is rebuilt
        log.info("ignoring an unreadable manifest index (%s: %s)", type(err).__name__, err)
        return None


def load_index(manifest_url: str, view: str = "") -> tuple[ShardManifest, list[str] | None] | None:
    """The counts-only manifest (or `view` of it) and the patterns it was built from, if a current index exists."""
    identity = identity_of(manifest_url)
    if identity is None:
        return None
    beside = index_url(manifest_url, view)
    if not is_remote(beside) and os.path.exists(beside):
        found = _load(beside, identity, manifest_url)
        if found:
            return found
    cache = _cache_path(manifest_url, view)
    if cache.exists():
        found = _load(str(cache), identity, manifest_url)
        if found:
            return found
    if is_remote(beside):
        fs, path = fsspec.core.url_to_fs(beside)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        found = _load(data, identity, manifest_url)
        if found:  # keep a local copy: the next process reads it from disk
            write_atomic(str(cache), data)
        return found
    return None


def training_manifest(manifest_url: str, patterns: list[str] | None = None) -> tuple[ShardManifest, bool]:
    """The counts-only manifest at `manifest_url` and whether it was built from exactly `patterns`.

    Reads the index, or the JSON once (then writes the index for every later process)."""
    found = load_index(manifest_url)
    if found is None:
        log.info("indexing manifest %s (once; later processes read %s)", manifest_url, index_url(manifest_url))
        full = read_manifest(manifest_url)
        write_index(full, manifest_url)
        found = load_index(manifest_url) or (full, None)
    manifest, built_from = found
    if patterns is None or built_from == list(patterns):
        return manifest, patterns is not None
    view = load_index(manifest_url, view_name(patterns))  # a subset or reordering another process resolved
    if view is not None and view[1] == list(patterns):
        return view[0], True
    return manifest, False
