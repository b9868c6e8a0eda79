"""Small shards with known keys for data tests (tiny JPEGs, captions that name the key)."""

from __future__ import annotations

import io
from pathlib import Path

import webdataset as wds
from PIL import Image

from open_vlm.data.loader import LoaderSettings, ShardLoader, Source
from open_vlm.data.manifest import write_manifest


def jpeg(value: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value % 256, (value * 7) % 256, (value * 13) % 256)).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(folder: Path, prefix: str, num_shards: int, per_shard: int | list[int], size: int = 16) -> list[str]:
    """`prefix-00000.tar ...` with samples keyed `<prefix>_<shard>_<i>`; writes manifest.json beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = per_shard if isinstance(per_shard, list) else [per_shard] * num_shards
    urls = []
    for shard, count in enumerate(counts):
        path = folder / f"{prefix}-{shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                key = f"{prefix}_{shard:03d}_{i:04d}"
                sink.write({"__key__": key, "jpg": jpeg(shard * 1000 + i, size), "txt": f"caption of {key}"})
        urls.append(str(path))
    write_manifest(urls, str(folder / "manifest.json"))
    return urls


def keys_only(sample: dict, source) -> dict:
    """A processor that keeps what the tests look at."""
    return {"key": sample["__key__"], "text": sample.get("text"), "source": source.name}


def collate_keys(samples: list[dict]) -> dict:
    """Keys of the good rows (a bad sample's row is a marked copy of a good one: left out here)."""
    good = [s for s in samples if s.get("__valid__", True)]
    return {
        "keys": [s["key"] for s in good],
        "sources": [s["source"] for s in good],
        "epochs": [s["__meta__"]["epoch"] for s in good],
        "meta": [s["__meta__"] for s in good],
        "rows": len(samples),
        "holes": [s["__meta__"] for s in samples if not s.get("__valid__", True)],
    }


def write_text_shards(folder: Path, prefix: str, counts: list[int]) -> list[str]:
    """Text-only shards (cheap to write and decode) with keys `<prefix>_<shard>_<i>`, and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for shard, count in enumerate(counts):
        path = folder / f"{prefix}-{shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(count):
                sink.write({"__key__": f"{prefix}_{shard:03d}_{i:04d}", "txt": "x"})
        urls.append(str(path))
    write_manifest(urls, str(folder / "manifest.json"))
    return urls


def make_loader(sources: list[Source], **settings) -> ShardLoader:
    defaults = dict(seed=0, global_batch=8, micro_batch=4, image_size=8, num_streams=8, window=4)
    return ShardLoader(sources, LoaderSettings(**{**defaults, **settings}), keys_only, collate_keys)
