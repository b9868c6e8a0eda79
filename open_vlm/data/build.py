"""From the data config to a `ShardLoader`: expand URLs, find (or build and cache) manifests."""

from __future__ import annotations

import logging
import posixpath
import re

import fsspec

from open_vlm.config.schema import DataConfig, SourceConfig, source_task
from open_vlm.data.compat import mixing_problem
from open_vlm.data.loader import LoaderSettings, ShardLoader, Source
from open_vlm.data.manifest import ShardManifest, build_manifest, read_manifest, save_manifest
from open_vlm.data.manifest_index import training_manifest, view_name, write_index
from open_vlm.data.shards import expand_urls
from open_vlm.data.version import manifest_version
from open_vlm.errors import ConfigError, DataError, usage_errors

log = logging.getLogger(__name__)


_BRACES = re.compile(r"\{([^{}]*)\}")


def _first_url(patterns: list[str]) -> str:
    """The first URL the patterns expand to, without expanding them (a million-shard range costs seconds)."""

    def first(match: re.Match) -> str:
        body = match.group(1)
        if ".." in body and "," not in body:
            return body.split("..")[0]  # `{000..999}` starts at `000`, padding included
        return body.split(",")[0]

    pattern = patterns[0]
    while True:
        reduced = _BRACES.sub(first, pattern)
        if reduced == pattern:
            return reduced
        pattern = reduced


def source_manifest(cfg: SourceConfig, strict: bool = False, count_missing: bool = True) -> ShardManifest:
    """The (counts-only) manifest of a source's shards, in the order its URL patterns give them.

    Reads `cfg.manifest` or `manifest.json` beside the first shard, through its binary index (manifest_index.py):
    a manifest built from exactly these patterns needs no URL expansion at all. Shards the manifest lacks are
    counted now and the merged manifest cached beside the shards when that location is writable. A shard that
    does not read to its end is counted as far as it reads and flagged in the manifest (`strict`: a DataError).
    """
    path = cfg.manifest or posixpath.join(posixpath.dirname(_first_url(cfg.urls)), "manifest.json")
    fs, fs_path = fsspec.core.url_to_fs(path)
    known: ShardManifest | None = None
    if fs.exists(fs_path):
        known, same_patterns = training_manifest(path, cfg.urls)
        if same_patterns:
            return known
    urls = expand_urls(cfg.urls)
    if known is not None and len(urls) == len(known) and all(a == b for a, b in zip(urls, known.urls)):
        write_index(known, path, patterns=cfg.urls)  # remember: the next process skips the expansion
        return known
    # Another order, a subset, or shards the manifest lacks: the full manifest (its sizes and checksums make
    # the subset's version), new shards counted and appended to it.
    full = read_manifest(path) if known is not None else ShardManifest()
    where = {url: i for i, url in enumerate(full.urls)}
    missing = [u for u in urls if u not in where]
    if missing and not count_missing:
        raise FileNotFoundError(f"source {cfg.name}: {len(missing)} shard(s) have no manifest entry ({missing[0]})")
    if missing:
        log.info("source %s: counting samples of %d shard(s) without a manifest entry", cfg.name, len(missing))
        try:
            counted = build_manifest(missing, strict=strict)
        except ValueError as err:  # strict: a damaged shard
            raise DataError(
                f"source {cfg.name}: {err} (data.strict is on; off, it is counted as far as it reads)"
            ) from err
        for info in counted.shards:
            if info.damaged:
                log.warning(
                    "source %s: %s is damaged (%s): training on the %d sample(s) that read (data.strict true stops)",
                    cfg.name,
                    info.url,
                    info.damaged,
                    info.num_samples,
                )
        full = ShardManifest(full.shards + counted.shards)
        where = {url: i for i, url in enumerate(full.urls)}
        try:
            save_manifest(full, path)
            log.info("source %s: manifest cached at %s", cfg.name, path)
        except OSError as err:
            log.warning("source %s: could not cache the manifest at %s (%s)", cfg.name, path, err)
    subset = full.select([where[u] for u in urls])
    if known is not None and not missing:  # remember this view of the manifest: later processes load it at once
        write_index(subset, path, patterns=cfg.urls, view=view_name(cfg.urls))
    return subset


def build_loader(
    cfg: DataConfig,
    *,
    seed: int,
    global_batch: int,
    image_size: int,
    process,
    collate,
    rank: int = 0,
    world: int = 1,
) -> ShardLoader:
    if not cfg.sources:
        raise ValueError("data.sources is empty: give at least one source with urls")
    sources = [Source(s.name, s.modality, s.weight, source_manifest(s, cfg.strict)) for s in cfg.sources]
    for source_cfg, source in zip(cfg.sources, sources):
        origin = f" (dataset {source_cfg.dataset} from {source_cfg.catalog_file})" if source_cfg.dataset else ""
        log.info(
            "source %s%s: %d samples in %d shards, version %s",
            source.name,
            origin,
            source.manifest.num_samples,
            len(source.manifest),
            manifest_version(source.manifest),
        )
    settings = LoaderSettings(
        seed=seed,
        global_batch=global_batch,
        micro_batch=cfg.batch_size,
        rank=rank,
        world=world,
        num_workers=cfg.num_workers,
        num_streams=cfg.num_streams,
        window=cfg.shuffle_window,
        image_size=image_size,
        strict=cfg.strict,
        mix_per_sample=cfg.mixing == "sample",
        mix_group=cfg.mix_group,
        worker_timeout_s=cfg.worker_timeout_s,
        max_member_bytes=cfg.max_member_bytes,
    )
    return ShardLoader(sources, settings, process, collate)


def source_processors(data: DataConfig, *, seed: int, bundle, tokenizer) -> tuple[list, list]:
    """A processor and a collator per source, by its task (`data.sources[i].task`, else `data.task`, else the
    model's); sources of one task share them, so they can share a batch."""
    from open_vlm.tokenize.registry import build_processor, task_options

    tasks = [source_task(s, data.task or bundle.task) for s in data.sources]
    problem = mixing_problem(data.mixing, tasks)
    if problem:
        raise ConfigError(problem)
    built: dict[str, tuple] = {}
    for task in dict.fromkeys(tasks):
        options = task_options(
            task,
            num_image_tokens=bundle.num_image_tokens,
            max_len=data.max_text_len,
            prompt=data.prompt,
            pad_to_multiple=data.pad_to_multiple,
            seed=seed,
            pack=data.pack,
            packed_mask=data.packed_mask,
        )
        with usage_errors(ValueError):  # a budget or tokenizer the task cannot work with: exit 2, one line
            built[task] = build_processor(task, tokenizer, **options)
        names = [s.name for s, t in zip(data.sources, tasks) if t == task]
        log.info("task %s: source(s) %s", task, ", ".join(names))
    return [built[t][0] for t in tasks], [built[t][1] for t in tasks]


def build_model_loader(
    data: DataConfig,
    *,
    seed: int,
    global_batch: int,
    bundle,
    tokenizer,
    rank: int = 0,
    world: int = 1,
    augment: bool = True,
) -> ShardLoader:
    """A loader over `data` whose samples are tokenized for each source's task (see `source_processors`); with
    `augment`, each source's images are augmented first, as its `augment` says (data/augment.py)."""
    from open_vlm.data.augment import augmented

    processors, collators = source_processors(data, seed=seed, bundle=bundle, tokenizer=tokenizer)
    if augment:
        processors = [
            augmented(p, data, src, f"data.sources[{i}]") for i, (p, src) in enumerate(zip(processors, data.sources))
        ]
    return build_loader(
        data,
        seed=seed,
        global_batch=global_batch,
        image_size=bundle.image_size,
        process=processors,
        collate=collators,
        rank=rank,
        world=world,
    )


def batch_to_device(batch: dict, device) -> dict:
    """Tensors of a batch on `device`; uint8 images become normalised float pixels there."""
    import torch

    from open_vlm.data.decode import normalize_images

    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key == "pixel_values" and value.dtype == torch.uint8:
                value = normalize_images(value)
        out[key] = value
    return out
