"""Fixtures for extraction tests: small image shards (non-square images, zero-padded keys), a tiny detector."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from open_vlm.config.schema import RegionExtractorConfig, RunConfig
from open_vlm.data.manifest import write_manifest
from open_vlm.extract.writer import ShardWriter

# (width, height) per sample, cycled: wide, tall, square.
SIZES = [(64, 40), (40, 64), (48, 48)]
COLOURS = ["red", "green", "blue"]


def image_bytes(i: int, size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, (240, 240, 240))
    w, h = size
    ImageDraw.Draw(image).rectangle([w // 4, h // 4, w // 2 + i % 5, h // 2], fill=(200, 30 * (i % 8), 40))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_image_shards(folder: Path, num_shards: int, per_shard: int) -> list[str]:
    """`img-0000{s}.tar` with keys `000{s}{i:02d}` (leading zeros), png images, captions and json labels."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = []
    for s in range(num_shards):
        url = str(folder / f"img-{s:05d}.tar")
        with ShardWriter(url) as sink:
            for i in range(per_shard):
                n = s * per_shard + i
                colour = COLOURS[n % 3]
                sink.write(
                    f"000{s}{i:02d}",
                    {
                        "png": image_bytes(n, SIZES[n % len(SIZES)]),
                        "txt": f"a {colour} square on the left".encode(),
                        "json": json.dumps({"colour": colour, "question": "what is it"}).encode(),
                    },
                )
        urls.append(url)
    write_manifest(urls, str(folder / "manifest.json"))
    return urls


def region_config(**overrides) -> RegionExtractorConfig:
    """A detector that runs in well under a second per batch on CPU; D = 16 (lxmert_tiny's visual_feat_dim)."""
    values = dict(
        backbone="resnet18_fpn",
        num_classes=5,
        representation_size=16,
        min_size=48,
        max_size=80,
        rpn_pre_nms_top_n=200,
        rpn_post_nms_top_n=8,
        score_thresh=0.99,
    )
    return RegionExtractorConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def detector_weights(tmp_path_factory) -> str:
    """A seeded random detector saved as a state-dict file (what a trained one would be)."""
    from open_vlm.extract.region import build_detector

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "detector.pt"
    torch.save(build_detector(region_config()).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory) -> list[str]:
    return write_image_shards(tmp_path_factory.mktemp("images"), num_shards=3, per_shard=3)


def extract_config(urls: list[str], out: str, weights: str | None, k: int = 12, **region) -> RunConfig:
    cfg = RunConfig()
    cfg.extract.urls = list(urls)
    cfg.extract.out = out
    cfg.extract.num_regions = k
    cfg.extract.batch_size = 2
    cfg.extract.device = "cpu"
    cfg.extract.region = region_config(weights=weights, **region)
    return cfg
