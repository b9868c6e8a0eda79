"""Shard manifests: the exact sample count (samples, not files), size and checksum of every shard."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import fsspec

from open_vlm.data.shards import iter_tar_samples, open_url

log = logging.getLogger(__name__)

FORMAT = "open_vlm.manifest/1"


@dataclass(frozen=True)
class ShardInfo:
    url: str
    num_samples: int
    size: int
    checksum: str  # "md5:<hex>" of the shard's bytes
    etag: str | None = None


@dataclass
class ShardManifest:
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def by_url(self) -> dict[str, ShardInfo]:
        return {s.url: s for s in self.shards}

    def to_json(self, relative_to: str | None = None) -> str:
        shards = []
        for shard in self.shards:
            row = asdict(shard)
            if relative_to and shard.url.startswith(relative_to.rstrip("/") + "/"):
                row["url"] = shard.url[len(relative_to.rstrip("/")) + 1 :]
            shards.append(row)
        return json.dumps({"format": FORMAT, "shards": shards}, indent=1)

    @classmethod
    def from_json(cls, text: str, base: str | None = None) -> ShardManifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"not an open_vlm manifest (format={data.get('format')!r})")
        shards = []
        for row in data["shards"]:
            url = row["url"]
            if base and "://" not in url and not url.startswith("/"):
                url = posixpath.join(base, url)
            shards.append(ShardInfo(**{**row, "url": url}))
        return cls(shards)


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


def describe_shard(url: str) -> ShardInfo:
    """Read one shard end to end: count samples (grouped by key), size and md5."""
    errors: list[Exception] = []
    with open_url(url) as raw:
        stream = _Hashing(raw)
        count = sum(1 for _ in iter_tar_samples(stream, url, on_error=lambda kind, where, err: errors.append(err)))
        while stream.read(1 << 20):  # hash any trailing padding too
            pass
    if errors:
        raise ValueError(f"{url}: corrupt or truncated tar ({errors[0]})")
    etag = None
    if "://" in url:
        fs, path = fsspec.core.url_to_fs(url)
        etag = fs.info(path).get("ETag")
        etag = etag.strip('"') if isinstance(etag, str) else None
    return ShardInfo(url=url, num_samples=count, size=stream.size, checksum=f"md5:{stream.md5.hexdigest()}", etag=etag)


def build_manifest(
    urls: list[str], workers: int = 8, on_shard: Callable[[ShardInfo], None] | None = None
) -> ShardManifest:
    """Describe every shard in parallel (I/O bound: threads), keeping the given order.

    `on_shard` is called with each shard's info as soon as it is done (progress reporting)."""

    def describe(url: str) -> ShardInfo:
        info = describe_shard(url)
        if on_shard is not None:
            on_shard(info)
        return info

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls)))) as pool:
        return ShardManifest(list(pool.map(describe, urls)))


def write_manifest(
    urls: list[str], out: str, workers: int = 8, on_shard: Callable[[ShardInfo], None] | None = None
) -> ShardManifest:
    """Build a manifest and write it to `out` (local or fsspec URL); URLs next to it are stored relative."""
    manifest = build_manifest(urls, workers, on_shard)
    base = posixpath.dirname(str(out))
    with fsspec.open(str(out), "w") as f:
        f.write(manifest.to_json(relative_to=base))
    return manifest


def read_manifest(path: str) -> ShardManifest:
    with fsspec.open(path, "r") as f:
        return ShardManifest.from_json(f.read(), base=posixpath.dirname(path))
