"""Helpers shared by the benchmarks: timing statistics and a realistic image-caption shard set."""

from __future__ import annotations

import io
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORDS = "a the red green blue small large dog cat man woman car tree house street on in with near of sky water".split()


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def parse_size(text: str) -> tuple[int, int]:
    """`640x480` → (640, 480) (width, height); `384` → (384, 384)."""
    width, _, height = text.lower().partition("x")
    return int(width), int(height or width)


def photo_like(rng: np.random.Generator, size: int | tuple[int, int]) -> Image.Image:
    """Smooth colour fields plus fine noise: JPEG sizes and decode cost close to real photos (~0.3 bits/px)."""
    width, height = (size, size) if isinstance(size, int) else size
    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_image_shards(out: Path, num_shards: int, per_shard: int, size: int | tuple[int, int], seed: int = 0) -> str:
    """`bench-000000.tar ...` (jpg + txt), manifest.json and a demo tokenizer; reused when already there.

    `size` is a side, or (width, height). Returns the brace pattern of the shards."""
    import webdataset as wds

    from open_vlm.data.manifest import write_manifest
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    pattern = str(out / f"bench-{{000000..{num_shards - 1:06d}}}.tar")
    stamp = out / "done.json"
    spec = {"num_shards": num_shards, "per_shard": per_shard, "size": size if isinstance(size, int) else list(size)}
    spec["seed"] = seed
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        if not (out / "manifest.offsets.npy").exists():  # made before sample offsets existed: every read would
            write_manifest([str(p) for p in sorted(out.glob("bench-*.tar"))], str(out / "manifest.json"))  # scan
        return pattern
    out.mkdir(parents=True, exist_ok=True)
    rng, words = np.random.default_rng(seed), random.Random(seed)
    captions, urls = [], []
    for shard in range(num_shards):
        path = out / f"bench-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                buf = io.BytesIO()
                photo_like(rng, size).save(buf, format="JPEG", quality=90)
                caption = " ".join(words.choice(WORDS) for _ in range(words.randint(5, 14)))
                captions.append(caption)
                sink.write({"__key__": f"{shard:06d}_{i:05d}", "jpg": buf.getvalue(), "txt": caption})
        urls.append(str(path))
    write_manifest(urls, str(out / "manifest.json"))
    build_demo_tokenizer(captions + ["caption en\n"], out / "tokenizer", vocab_size=200)
    stamp.write_text(json.dumps(spec))
    return pattern
