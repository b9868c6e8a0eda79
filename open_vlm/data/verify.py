"""Re-check shards against their manifest: missing, truncated or changed (size, sample count, checksum)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec

from open_vlm.data.manifest import ShardInfo, ShardManifest, describe_shard


@dataclass(frozen=True)
class ShardProblem:
    """One shard that no longer matches its manifest entry."""

    url: str
    kind: str  # missing | truncated | changed | unlisted
    detail: str


def _stat(url: str) -> dict | None:
    fs, path = fsspec.core.url_to_fs(url)
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def verify_shard(info: ShardInfo, quick: bool = False) -> ShardProblem | None:
    """Compare one shard with its manifest entry; `quick` compares size (and etag) without reading it."""
    stat = _stat(info.url)
    if stat is None:
        return ShardProblem(info.url, "missing", "not found")
    size = int(stat.get("size") or 0)
    if quick:
        etag = stat.get("ETag")
        etag = etag.strip('"') if isinstance(etag, str) else None
        if size < info.size:
            return ShardProblem(info.url, "truncated", f"{size} bytes, the manifest says {info.size}")
        if size != info.size or (etag and info.etag and etag != info.etag):
            return ShardProblem(info.url, "changed", f"size {info.size} -> {size}, etag {info.etag} -> {etag}")
        return None
    try:
        now = describe_shard(info.url)
    except ValueError as err:  # the tar ends inside a member
        return ShardProblem(info.url, "truncated", f"{size} of {info.size} bytes readable: {err}")
    changes = [
        f"{name} {getattr(info, name)} -> {getattr(now, name)}"
        for name in ("size", "num_samples", "checksum")
        if getattr(info, name) != getattr(now, name)
    ]
    if not changes:
        return None
    # A tar cut at a member boundary still reads: fewer samples in fewer bytes is a truncation too.
    shorter = now.size < info.size and now.num_samples < info.num_samples
    return ShardProblem(info.url, "truncated" if shorter else "changed", ", ".join(changes))


def verify_manifest(
    manifest: ShardManifest, urls: list[str] | None = None, quick: bool = False, workers: int = 8
) -> list[ShardProblem]:
    """Problems of every manifest shard (in manifest order), plus `urls` the manifest does not list."""
    shards = manifest.shards
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(shards)))) as pool:
        problems = [p for p in pool.map(lambda s: verify_shard(s, quick), shards) if p is not None]
    listed = manifest.by_url()
    problems += [ShardProblem(u, "unlisted", "not in the manifest") for u in urls or [] if u not in listed]
    return problems
