"""Shard manifests: the exact sample count (samples, not files), size and checksum of every shard.

`manifest.json` (`open_vlm.manifest/1`) is the interchange format. A manifest is held as columns (numpy arrays:
counts, sizes, URL names under one base), so a million shards cost tens of MB rather than hundreds, and can be
shared with forked workers without per-object copies. Parsing a large JSON is slow, so a binary index
(`manifest.index.npz`, see `manifest_index.py`) sits beside it and is what training processes load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np

from open_vlm.data.shards import iter_tar_samples, open_url
from open_vlm.storage import write_atomic

log = logging.getLogger(__name__)

FORMAT = "open_vlm.manifest/1"


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_samples: int
    size: int
    checksum: str  # "md5:<hex>" of the shard's bytes
    etag: str | None = None
    damaged: str | None = None  # why the shard does not read to its end (its count is of the samples that read)


class UrlColumn:
    """Many URLs as one base plus a fixed-width bytes array of names (a few bytes per shard, one object)."""

    def __init__(self, base: str, names: np.ndarray):
        self.base, self.names = base, names

    @classmethod
    def from_list(cls, urls: Sequence[str]) -> UrlColumn:
        urls = list(urls)
        base = posixpath.commonprefix(urls) if urls else ""
        base = base[: base.rfind("/") + 1]  # a directory prefix ("" for bare names), never part of a file name
        return cls(base, np.array([u[len(base) :].encode() for u in urls], dtype=bytes))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> str:
        return self.base + self.names[i].decode()

    def __iter__(self):
        return (self.base + n.decode() for n in self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, UrlColumn) and list(self) == list(other)


class ShardManifest:
    """Per-shard facts in manifest order; built from `ShardInfo`s or from columns (`from_columns`)."""

    def __init__(self, shards: Iterable[ShardInfo] = ()):
        infos = list(shards)
        self.urls = UrlColumn.from_list([s.url for s in infos])
        self.counts = np.array([s.num_samples for s in infos], dtype=np.int64)
        self.sizes: np.ndarray | None = np.array([s.size for s in infos], dtype=np.int64)
        self.checksums: list[str] | None = [s.checksum for s in infos]
        self.etags: list[str | None] | None = [s.etag for s in infos]
        self.damaged: list[str | None] | None = [s.damaged for s in infos]
        self.version: str | None = None  # set by the index (cached); compute with `data.version.manifest_version`
        self.offsets: np.ndarray | None = None  # every sample's byte offset, when just built by `build_manifest`
        self._starts: np.ndarray | None = None  # each shard's first sample in the offsets file (views differ)
        self.sample_offsets = None  # an `offsets.SampleOffsets` when an offsets file exists (set by the index)

    @classmethod
    def from_columns(
        cls, urls: UrlColumn, counts: np.ndarray, sizes=None, checksums=None, etags=None, version=None, damaged=None
    ) -> ShardManifest:
        """A manifest from columns; `sizes`/`checksums`/`etags`/`damaged` may be absent (a training-only view)."""
        out = cls.__new__(cls)
        out.urls, out.counts = urls, np.asarray(counts)  # int32 from an index: 4 bytes a shard
        out.sizes, out.checksums, out.etags, out.version = sizes, checksums, etags, version
        out.offsets, out._starts, out.sample_offsets = None, None, None
        out.damaged = damaged
        return out

    @property
    def offset_starts(self) -> np.ndarray:
        """Each shard's first sample in the manifest's offsets file (shard after shard, unless a view)."""
        if self._starts is not None:
            return self._starts
        return np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)[:-1]]) if len(self) else np.zeros(0)

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    @property
    def complete(self) -> bool:
        """Whether sizes and checksums are present (not a training-only view)."""
        return self.sizes is not None and self.checksums is not None

    @property
    def shards(self) -> list[ShardInfo]:
        """Every shard as a `ShardInfo` (one object each: for tools and small manifests, not the training path)."""
        if not self.complete:
            raise ValueError("this manifest holds sample counts only (read the manifest JSON for sizes/checksums)")
        etags = self.etags or [None] * len(self)
        damaged = self.damaged or [None] * len(self)
        return [
            ShardInfo(url, int(n), int(size), checksum, etag, bad)
            for url, n, size, checksum, etag, bad in zip(
                self.urls, self.counts, self.sizes, self.checksums, etags, damaged
            )
        ]

    def by_url(self) -> dict[str, ShardInfo]:
        return {s.url: s for s in self.shards}

    def select(self, indices: Sequence[int]) -> ShardManifest:
        """The manifest of the shards at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        urls = UrlColumn.from_list([self.urls[int(i)] for i in idx])
        pick = (lambda col: [col[int(i)] for i in idx]) if self.complete else (lambda col: None)
        sizes = self.sizes[idx] if self.sizes is not None else None
        etags = pick(self.etags) if self.etags is not None else None
        damaged = pick(self.damaged) if self.damaged is not None else None
        out = ShardManifest.from_columns(urls, self.counts[idx], sizes, pick(self.checksums), etags, damaged=damaged)
        out._starts = self.offset_starts[idx]
        return out

    def to_json(self, relative_to: str | None = None) -> str:
        prefix = relative_to.rstrip("/") + "/" if relative_to else None
        shards = []
        for info in self.shards:
            url = info.url[len(prefix) :] if prefix and info.url.startswith(prefix) else info.url
            row = {"url": url, "num_samples": info.num_samples, "size": info.size, "checksum": info.checksum}
            shards.append({**row, "etag": info.etag, **({"damaged": info.damaged} if info.damaged else {})})
        return json.dumps({"format": FORMAT, "shards": shards}, indent=1)

    @classmethod
    def from_json(cls, text: str, base: str | None = None) -> ShardManifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not an open_vlm manifest (format={data.get('format')!r})")
        rows = data["shards"]
        urls = []
        for row in rows:
            url = row["url"]
            if base and "://" not in url and not url.startswith("/"):
                url = posixpath.join(base, url)
            urls.append(url)
        return cls.from_columns(
            UrlColumn.from_list(urls),
            np.fromiter((row["num_samples"] for row in rows), dtype=np.int64, count=len(rows)),
            np.fromiter((row["size"] for row in rows), dtype=np.int64, count=len(rows)),
            [row["checksum"] for row in rows],
            [row.get("etag") for row in rows],
            damaged=[row.get("damaged") for row in rows],
        )


class _Hashing:
    """A read-through stream wrapper that hashes what passes through it."""

    def __init__(self, stream):
        self.stream = stream
        self.md5 = hashlib.md5()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.md5.update(data)
        self.size += len(data)
        return data


def describe_shard(url: str, strict: bool = True) -> ShardInfo:
    """Read one shard end to end: count samples (grouped by key), size and md5 (see `scan_shard`)."""
    return scan_shard(url, strict)[0]


def scan_shard(url: str, strict: bool = True) -> tuple[ShardInfo, np.ndarray]:
    """`describe_shard`, and the byte offset where each sample starts (see offsets.py).

    A tar that does not read to its end (truncated, corrupt) raises a ValueError naming it when `strict`; otherwise
    its count is of the samples that read (what the loader will read from it) and `damaged` says why, warned."""
    errors: list[Exception] = []
    with open_url(url) as raw:
        stream = _Hashing(raw)
        samples = iter_tar_samples(stream, url, on_error=lambda kind, where, err: errors.append(err), read_data=False)
        offsets = np.fromiter((sample["__offset__"] for sample in samples), dtype=np.int64)
        count = len(offsets)
        while stream.read(1 << 20):  # hash any trailing padding too
            pass
    damaged = f"corrupt or truncated tar ({type(errors[0]).__name__}: {errors[0]})" if errors else None
    if damaged and strict:
        raise ValueError(f"{url}: {damaged}")
    if damaged:
        log.warning("%s: %s: counted the %d sample(s) that read, flagged in the manifest", url, damaged, count)
    etag = None
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url)
        etag = fs.info(path).get("ETag")
        etag = etag.strip('"') if isinstance(etag, str) else None
    md5 = f"md5:{stream.md5.hexdigest()}"
    return ShardInfo(url=url, num_samples=count, size=stream.size, checksum=md5, etag=etag, damaged=damaged), offsets


def build_manifest(
    urls: list[str], workers: int = 8, on_shard: Callable[[ShardInfo], None] | None = None, strict: bool = True
) -> ShardManifest:
    """Describe every shard in parallel (I/O bound: threads), keeping the given order.

    `on_shard` is called with each shard's info as soon as it is done (progress reporting); `strict` false flags a
    damaged shard instead of failing (see `describe_shard`)."""

    def describe(url: str) -> tuple[ShardInfo, np.ndarray]:
        found = scan_shard(url, strict)
        if on_shard is not None:
            on_shard(found[0])
        return found

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        scanned = list(pool.map(describe, urls))
    manifest = ShardManifest([info for info, _ in scanned])
    manifest.offsets = np.concatenate([offsets for _, offsets in scanned]) if scanned else np.zeros(0, np.int64)
    return manifest


def save_manifest(manifest: ShardManifest, out: str) -> None:
    """Write `manifest` as JSON to `out` (URLs beside it stored relative) and its binary index beside it."""
    from open_vlm.data.manifest_index import identity_of, write_index
    from open_vlm.data.offsets import write_offsets

    write_atomic(str(out), manifest.to_json(relative_to=posixpath.dirname(str(out))).encode())
    identity = identity_of(str(out))
    if manifest.offsets is not None and len(manifest.offsets) == manifest.num_samples and identity is not None:
        write_offsets(str(out), identity, manifest.offsets)
    write_index(manifest, str(out))


def write_manifest(
    urls: list[str], out: str, workers: int = 8, on_shard: Callable[[ShardInfo], None] | None = None
) -> ShardManifest:
    """Build a manifest and write it to `out` (local or fsspec URL), with its index."""
    manifest = build_manifest(urls, workers, on_shard)
    save_manifest(manifest, out)
    return manifest


def read_manifest(path: str) -> ShardManifest:
    """The full manifest (sizes, checksums) from its JSON."""
    with fsspec.open(path, "r") as f:
        return ShardManifest.from_json(f.read(), base=posixpath.dirname(path))
