"""Checks on a resolved run config before any work starts: numbers in range, batch sizes that divide, and every
path the command will read present. Each failure is a `ConfigError` (exit 2) naming the key, the reason and the
fix; storage that cannot be reached is a `DataError` (exit 1).

`check_values` runs inside `load_run_config`; entry points call `check_inputs(cfg, command, world)` once the
command and the world size are known (it also probes each source's first shard, see `data/preflight.py`).
"""

from __future__ import annotations

import math
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from open_vlm.config.schema import AugmentConfig, RunConfig, SourceConfig
from open_vlm.errors import ConfigError, DataError, one_line
from open_vlm.names import did_you_mean
from open_vlm.storage import is_remote


@dataclass(frozen=True)
class Range:
    """Allowed numbers: `low` / `high` bounds (None: unbounded), each inclusive unless marked open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def text(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
UNIT, UNIT_OPEN_TOP, UNIT_OPEN_BOTTOM = Range(0, 1), Range(0, 1, high_open=True), Range(0, 1, low_open=True)

RANGES: dict[str, Range] = {
    "data.batch_size": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.num_streams": AT_LEAST_1,
    "data.shuffle_window": AT_LEAST_0,
    "data.max_text_len": AT_LEAST_1,
    "data.pad_to_multiple": AT_LEAST_1,
    "data.max_member_bytes": AT_LEAST_1,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.beta1": UNIT_OPEN_TOP,
    "optim.beta2": UNIT_OPEN_TOP,
    "optim.eps": POSITIVE,
    "optim.warmup_steps": AT_LEAST_0,
    "optim.warmup_fraction": UNIT_OPEN_TOP,
    "optim.min_lr_ratio": UNIT,
    "optim.grad_clip": AT_LEAST_0,
    "train.max_steps": AT_LEAST_1,
    "train.epochs": AT_LEAST_0,
    "train.global_batch_size": AT_LEAST_0,
    "train.accum_steps": AT_LEAST_1,
    "train.shutdown_timeout": AT_LEAST_0,
    "checkpoint.every_steps": AT_LEAST_0,
    "checkpoint.every_minutes": AT_LEAST_0,
    "checkpoint.keep_last": AT_LEAST_0,
    "logging.every_steps": AT_LEAST_1,
    "logging.system_every_steps": AT_LEAST_0,
    "extract.num_regions": AT_LEAST_1,
    "extract.batch_size": AT_LEAST_1,
    "extract.region.num_classes": Range(2),
    "extract.region.representation_size": AT_LEAST_1,
    "extract.region.min_size": AT_LEAST_1,
    "extract.region.max_size": AT_LEAST_1,
    "extract.region.score_thresh": UNIT,
    "extract.region.nms_iou": UNIT_OPEN_BOTTOM,
    "extract.region.nms_iou_step": UNIT_OPEN_BOTTOM,
    "extract.region.rpn_pre_nms_top_n": AT_LEAST_1,
    "extract.region.rpn_post_nms_top_n": AT_LEAST_1,
    "extract.region.rpn_nms_thresh": UNIT_OPEN_BOTTOM,
    "eval.every_steps": AT_LEAST_0,
    "eval.max_batches": AT_LEAST_0,
    "eval.threshold": UNIT,
    "eval.max_samples": AT_LEAST_0,
    "eval.num_regions": AT_LEAST_1,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Path-valued keys: (what must be there, what to give instead).
CHECKPOINT = ("complete checkpoint", "a checkpoint, a run folder or an exported folder (local or s3://)")
MODEL_PATHS: dict[str, tuple[str, str]] = {
    "model.config": ("model config file", "a YAML or JSON model config such as configs/models/paligemma_tiny.yaml"),
    "model.pretrained": ("save_pretrained folder", "a folder written by save_pretrained (local or s3://)"),
    "model.tokenizer": ("tokenizer folder", "an HF tokenizer folder (local or s3://) or openclip:<model>"),
    "model.open_clip_checkpoint": ("state-dict file", "an open_clip state dict .pt/.bin/.safetensors (or s3://)"),
}
WEIGHTS = ("state-dict file", "a detector state dict .pt/.pth/.safetensors (local or s3://), or nothing")
PATHS = {
    **MODEL_PATHS,
    "checkpoint.init_from": CHECKPOINT,
    "checkpoint.resume": CHECKPOINT,
    "eval.checkpoint": CHECKPOINT,
    "extract.region.weights": WEIGHTS,
}
IMAGE = ("image file", "an image file (jpg, png or webp)")
SHARDS = "shard files or brace patterns such as data/x-{000000..000009}.tar (local or s3://)"


def value_at(cfg: Any, key: str) -> Any:
    """The value of a dotted key (`train.max_steps`) in a config object."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_range(key: str, value: float, allowed: Range) -> None:
    """`ConfigError` naming `key` (a config key or a `--flag`) when `value` is outside `allowed`."""
    if not allowed.allows(value):
        where = "" if key.startswith("-") else f" in the config or with --{key}"
        must = allowed.text() if math.isfinite(value) else f"a finite number {allowed.text()}"
        raise ConfigError(f"{key}: {value!r} is out of range (it must be {must}); set it{where}")


def check_values(cfg: RunConfig) -> None:
    """Every number in range and the batch sizes consistent for one process (`check_batch` for more)."""
    for key, allowed in RANGES.items():
        check_range(key, value_at(cfg, key), allowed)
    for group, lr in cfg.optim.group_lr.items():
        check_range(f"optim.group_lr.{group}", lr, AT_LEAST_0)
    for section, sources in (("data.sources", cfg.data.sources), ("eval.sources", cfg.eval.sources)):
        for i, source in enumerate(sources):
            check_range(f"{section}[{i}].weight", source.weight, POSITIVE)
    if cfg.logging.level.upper() not in LOG_LEVELS:
        raise ConfigError(f"logging.level: expected one of {list(LOG_LEVELS)}, got {cfg.logging.level!r}")
    from open_vlm.tracking import check_trackers

    check_trackers(cfg.logging)
    if cfg.data.augment or any(source.augment != AugmentConfig() for source in cfg.data.sources):
        from open_vlm.data.augment import check_augment

        check_augment(cfg.data)
    check_batch(cfg, world=None)


def check_batch(cfg: RunConfig, world: int | None) -> None:
    """`train.global_batch_size` must be `data.batch_size` x world size x accumulation steps (world None: not
    known yet, e.g. in the launcher; then only a multiple of `data.batch_size`)."""
    total, micro = cfg.train.global_batch_size, cfg.data.batch_size
    per_step = micro * (world or 1)
    if total and total % per_step:
        below = total // per_step * per_step
        near = " or ".join(str(n) for n in (below, below + per_step) if n)
        of = f"data.batch_size ({micro})" + (f" x world size ({world}) = {per_step}" if world else "")
        raise ConfigError(
            f"train.global_batch_size: {total} is not a multiple of {of}; use {near}, or change data.batch_size"
        )


def _fs(key: str, url: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:  # an unknown protocol, or its package is not installed
        raise ConfigError(f"{key}: cannot open '{url}': {one_line(err)}") from err


def unreachable(key: str, url: str, err: Exception) -> DataError:
    return DataError(
        f"{key}: cannot read '{url}': {one_line(err)}; check the URL, your credentials and the endpoint "
        "(AWS_ENDPOINT_URL, or open-vlm config set s3_endpoint URL)"
    )


def _names_in(key: str, url: str) -> list[str] | None:
    """Names in the folder of `url`, or None when that folder does not exist."""
    fs, path = _fs(key, url)
    try:
        return [posixpath.basename(p.rstrip("/")) for p in fs.ls(posixpath.dirname(path.rstrip("/")), detail=False)]
    except FileNotFoundError:
        return None
    except Exception as err:  # credentials, endpoint, network: the storage, not the key, is the problem
        raise unreachable(key, url, err) from err


def _not_found(key: str, url: str) -> str:
    """Why `url` was not found, in parentheses: its folder is missing too, or the closest name in it."""
    where = "" if is_remote(url) or os.path.isabs(url) else f", relative to {os.getcwd()}"
    names = _names_in(key, url)
    if names is None:
        return f"(no folder '{posixpath.dirname(url.rstrip('/')) or '.'}'{where})"
    name = posixpath.basename(url.rstrip("/"))
    if name in names:  # listed, yet not there: a symlink whose target is gone
        return f"(a broken symlink{where})"
    return f"(not found{where}{did_you_mean(name, names)})"


def _exists(key: str, url: str) -> bool:
    fs, path = _fs(key, url)
    try:
        return fs.exists(path)
    except Exception as err:  # credentials, endpoint, network
        raise unreachable(key, url, err) from err


def require_path(key: str, value: str, what: str, fix: str) -> None:
    """`ConfigError` unless `value` (a local path or URL) exists: names the key, the path and what to give."""
    if _exists(key, value):
        return
    raise ConfigError(f"{key}: no {what} at '{value}' {_not_found(key, value)}; give {fix}")


def missing_shards(key: str, urls: list[str]) -> list[str]:
    """The URLs that name no file, from one listing per folder (HTTP, which cannot list, checks its first URL)."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        by_folder.setdefault(posixpath.dirname(url), []).append(url)
    missing = []
    for group in by_folder.values():
        if group[0].startswith(("http://", "https://")):
            missing += [] if _exists(key, group[0]) else group[:1]
            continue
        names = set(_names_in(key, group[0]) or ())
        missing += [url for url in group if posixpath.basename(url) not in names]
    return missing


def check_shards(key: str, patterns: list[str]) -> None:
    """`ConfigError` when any shard the patterns expand to is missing: how many, the first, a close name."""
    from open_vlm.data.shards import expand_urls

    urls = expand_urls(patterns)
    if not urls:
        raise ConfigError(f"{key}: no shard URLs; give {SHARDS}")
    missing = missing_shards(key, urls)
    if missing:
        first = missing[0]
        raise ConfigError(
            f"{key}: {len(missing)} of {len(urls)} shard(s) match no file, e.g. '{first}' {_not_found(key, first)}; "
            f"fix {patterns}: give {SHARDS}"
        )


def check_model_inputs(checkpoint: str, images: list[str] | None, key: str = "--checkpoint") -> None:
    """`generate` / `embed` / `export`: the checkpoint (or run / exported folder) and each image exist."""
    require_path(key, checkpoint, *CHECKPOINT)
    for image in images or []:
        require_image("--image", image)


def require_image(key: str, value: str) -> None:
    """`ConfigError` unless `value` is an image file PIL can read (a remote one: that it exists), checked before
    a model loads: a folder, or a failed download saved under an image's name, is named with what to give."""
    require_path(key, value, *IMAGE)
    if is_remote(value):
        return
    if os.path.isdir(value):
        raise ConfigError(f"{key}: '{value}' is a folder; give {IMAGE[1]}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(value) as image:
            image.load()  # decodes all of it: a JPEG cut short has a good header (verify() reads no JPEG data)
    except UnidentifiedImageError:
        raise ConfigError(
            f"{key}: cannot read '{value}' as an image (not a format PIL reads); give {IMAGE[1]}"
        ) from None
    except Exception as err:  # truncated or damaged: PIL raises many types
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}" if str(err) else type(err).__name__
        raise ConfigError(f"{key}: cannot read '{value}' as an image ({reason}); give {IMAGE[1]}") from err


def require_bucket(key: str, url: str) -> None:
    """A remote `checkpoint.dir` need not exist yet, but its bucket must (else the first save fails). Checked by
    listing it, which the checkpointer does anyway (finding the latest, pruning), so that the check needs no
    permission the job does not (an S3 HeadBucket, say, which moto holds apart from s3:ListBucket)."""
    protocol, _, rest = url.partition("://")
    bucket = f"{protocol}://{rest.split('/', 1)[0]}"
    fs, path = _fs(key, bucket)
    try:
        fs.ls(path, detail=False)
    except FileNotFoundError:
        raise ConfigError(f"{key}: no bucket at '{bucket}'; give an existing bucket (create it first)") from None
    except Exception as err:  # credentials, endpoint, network
        raise unreachable(key, bucket, err) from err


def _indexed(section: str, sources: list[SourceConfig]) -> list[tuple[str, SourceConfig]]:
    return [(f"{section}[{i}]", source) for i, source in enumerate(sources)]


@dataclass
class Reads:
    """What a command will read: path-valued keys, sources fed to the decoder, other shard lists by key."""

    paths: list[str]
    sources: list[tuple[str, SourceConfig]]
    shards: list[tuple[str, list[str]]]


def reads(cfg: RunConfig, command: str) -> Reads:
    """The inputs `command` (train, eval, extract) reads with this config."""
    model = list(MODEL_PATHS)
    data, held_out = _indexed("data.sources", cfg.data.sources), _indexed("eval.sources", cfg.eval.sources)
    if command == "train":
        resume = ["checkpoint.resume"] if cfg.checkpoint.resume not in ("latest", "none") else []
        return Reads([*model, "checkpoint.init_from", *resume], data + (held_out if cfg.eval.every_steps else []), [])
    if command == "eval" and cfg.eval.kind == "loss":  # the model comes from the checkpoint, the data as trained
        return Reads(["eval.checkpoint"], held_out or data, [])
    if command == "eval":  # classification reads its own members (image, json label), not a modality's
        return Reads(["eval.checkpoint", *model], [], [(f"{key}.urls", s.urls) for key, s in data + held_out])
    if command == "extract":
        paths = model if cfg.extract.extractor == "grid" else ["extract.region.weights"]
        return Reads(paths, [], [("extract.urls", cfg.extract.urls)] if cfg.extract.urls else [])
    raise ValueError(f"unknown command {command!r}")


def check_inputs(cfg: RunConfig, command: str, world: int = 1) -> None:
    """Before `command` (train, eval, extract) does any work: every path it reads present, each source's first
    shard decodable as its modality (`DataError`, exit 1), and for train the batch sizes for `world` processes."""
    if command == "train":
        check_batch(cfg, world)
    inputs = reads(cfg, command)
    for key in inputs.paths:
        value = value_at(cfg, key)
        if value and not str(value).startswith("openclip:"):
            require_path(key, value, *PATHS[key])
    if command == "train" and cfg.checkpoint.dir and is_remote(cfg.checkpoint.dir):
        require_bucket("checkpoint.dir", cfg.checkpoint.dir)
    for key, patterns in [(f"{k}.urls", s.urls) for k, s in inputs.sources] + inputs.shards:
        check_shards(key, patterns)
    if inputs.sources:
        from open_vlm.data.preflight import check_first_shards

        check_first_shards(inputs.sources)
