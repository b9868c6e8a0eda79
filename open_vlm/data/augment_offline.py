"""Offline augmentation: augmented copies of a dataset written as new shards with a manifest, registered in the
catalog as a new version of the dataset whose entry records the recipe and what it was made from.

Copy c of the sample at position j (its index in the source's shard order) is augmented with the seed of
(seed, 0, j) and copy c (`augment.sample_seed`), so the same command writes the same bytes; the full-size image
is augmented (a crop keeps the image's size) and re-encoded in its own format. Every other member is copied.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from open_vlm.config.schema import AugmentConfig
from open_vlm.data.augment import ImageAugment, sample_seed
from open_vlm.data.catalog import DatasetEntry
from open_vlm.data.decode import IMAGE_SUFFIXES
from open_vlm.data.manifest import ShardManifest, write_manifest
from open_vlm.data.shards import expand_urls, iter_tar_samples, open_url
from open_vlm.data.version import manifest_version
from open_vlm.errors import DataError
from open_vlm.extract.writer import ShardWriter

log = logging.getLogger(__name__)

FORMATS = {
    "jpg": ("JPEG", {"quality": 95}),
    "jpeg": ("JPEG", {"quality": 95}),
    "png": ("PNG", {}),
    "webp": ("WEBP", {"lossless": True}),
}


@dataclass
class AugmentedCopies:
    """What `augment_shards` wrote."""

    urls: list[str]
    manifest: ShardManifest
    manifest_path: str
    samples_without_image: int = 0


def augment_image(data: bytes, suffix: str, augment: ImageAugment, seed: int) -> bytes:
    """Image bytes → the augmented image, encoded as `suffix` says."""
    try:
        image = Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as err:  # PIL raises many types for bad data
        raise DataError(f"undecodable image: {err}") from err
    pixels = augment(torch.from_numpy(np.array(image)), seed).numpy()
    fmt, options = FORMATS[suffix]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def augment_shards(
    patterns: list[str], settings: AugmentConfig, out: str, seed: int = 0, copies: int = 1
) -> AugmentedCopies:
    """Write `copies` augmented copies of every shard of `patterns` to `out` (`<stem>-aug<c>.tar`) + manifest.json."""
    urls = expand_urls(patterns)
    augment = ImageAugment(settings)
    written, no_image = [], 0
    for copy in range(copies):
        position = 0
        for url in urls:
            stem = posixpath.basename(url).removesuffix(".tar")
            target = posixpath.join(out.rstrip("/"), f"{stem}-aug{copy}.tar")
            with open_url(url) as stream, ShardWriter(target) as writer:
                for sample in iter_tar_samples(stream, url):
                    members = {k: v for k, v in sample.items() if not k.startswith("__")}
                    suffix = next((s for s in IMAGE_SUFFIXES if s in members), None)
                    if suffix is None:
                        no_image += 1
                    else:
                        seed_j = sample_seed((seed, 0, position), copy)
                        try:
                            members[suffix] = augment_image(members[suffix], suffix, augment, seed_j)
                        except DataError as err:
                            raise DataError(f"{url} key {sample['__key__']}: {err}") from err
                    writer.write(f"{sample['__key__']}_aug{copy}", members)
                    position += 1
            written.append(target)
            log.info("wrote %s", target)
    manifest_path = posixpath.join(out.rstrip("/"), "manifest.json")
    manifest = write_manifest(written, manifest_path)
    return AugmentedCopies(written, manifest, manifest_path, no_image)


def augmented_entry(
    name: str,
    source: DatasetEntry,
    split: str,
    copies: AugmentedCopies,
    settings: AugmentConfig,
    seed: int,
    count: int,
) -> DatasetEntry:
    """The catalog entry of the augmented copies: `source`'s modality, tasks and description, the new shards and
    version, and under `augment` the recipe, seed, copies and the dataset / split / version they came from."""
    recipe = {k: v for k, v in dataclasses.asdict(settings).items() if v != getattr(AugmentConfig(), k)}
    origin_manifest = source.manifest_path()
    from open_vlm.data.manifest import read_manifest

    origin_version = manifest_version(read_manifest(origin_manifest))
    return DatasetEntry(
        name=name,
        urls=list(copies.urls),
        modality=source.modality,
        tasks=list(source.tasks),
        description=(source.description + " " if source.description else "") + f"(augmented x{count})",
        manifest=copies.manifest_path,
        version=manifest_version(copies.manifest),
        augment={
            "recipe": recipe,
            "seed": seed,
            "copies": count,
            "from": {"dataset": source.name, "split": split, "version": origin_version, "urls": list(source.urls)},
        },
    )
