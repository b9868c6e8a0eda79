"""`open-vlm data bench --config RUN.yaml`: the run's loader alone, for one rank, exactly as training builds it.

Decode, resize, augment, tokenize and collate run as in training (same sources, task, batch sizes, workers,
pinned memory on CUDA); no model runs. It prints the time to the first batch, samples/s, batches/s and
tokens/s after it, and with `--profile` the seconds per stage (data/stages.py). Run it on your own shards before
renting GPUs, and to compare versions.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from open_vlm.config.schema import RunConfig
from open_vlm.data.loader import ShardLoader
from open_vlm.data.stages import MAIN_STAGES, WORKER_STAGES
from open_vlm.errors import ConfigError

log = logging.getLogger(__name__)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="open-vlm data bench",
        description="Run a training config's data loader alone and print its throughput. Config overrides "
        "(--data.num_streams 128 ...) may follow.",
    )
    p.add_argument("--config", required=True, help="a run config (the data, model and train sections are read)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps of data to read after the first batch")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers for this bench")
    p.add_argument("--profile", action="store_true", help="seconds per stage: read, decode, process, pack, ...")
    p.add_argument("--rank", type=int, default=None, help="which rank's share to read (default: RANK or 0)")
    p.add_argument("--world", type=int, default=None, help="ranks of the run (default: WORLD_SIZE or 1)")
    return p


@dataclass
class BenchResult:
    first_batch_s: float  # from iter() to the first micro-batch (worker start, shard opening, first decodes)
    seconds: float  # after the first batch
    batches: int  # micro-batches after the first
    samples: int  # their rows (bad samples' rows included: they are read and decoded too)
    tokens: int  # their real tokens (collators' `num_tokens`)
    bad_samples: int
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage over the whole run

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)

    @property
    def batches_per_s(self) -> float:
        return self.batches / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def _rows(batch: dict) -> int:
    for key in ("valid", "input_ids", "pixel_values"):
        if isinstance(batch.get(key), torch.Tensor):
            return int(batch[key].shape[0])
    return len(batch.get("__meta__") or [])


def measure(loader: ShardLoader, steps: int) -> BenchResult:
    """Read the first micro-batch, then `steps` optimizer steps of micro-batches, timing both."""
    t0 = time.perf_counter()
    batches = iter(loader)
    first = next(batches)
    t1 = time.perf_counter()
    rows = tokens = count = 0
    for _ in range(steps * loader.accum_steps):
        batch = next(batches)
        count += 1
        rows += _rows(batch)
        tokens += int(batch.get("num_tokens", 0))
    elapsed = time.perf_counter() - t1
    stages = dict(loader.stage_seconds)
    del batches, first  # stops the workers
    return BenchResult(t1 - t0, elapsed, count, rows, tokens, sum(loader.bad_samples.values()), stages)


def model_bundle(cfg: RunConfig, tokenizer):
    """What the data side needs of the model (task, image size, image tokens), without materialising weights."""
    from open_vlm.models.registry import build_model

    try:
        with torch.device("meta"):
            return build_model(cfg.model, tokenizer)
    except (RuntimeError, NotImplementedError, ValueError) as err:  # e.g. from_pretrained refuses meta
        log.info("building the model for its input shapes (%s)", str(err).splitlines()[0])
    return build_model(cfg.model, tokenizer)


def build(cfg: RunConfig, rank: int, world: int, profile: bool) -> ShardLoader:
    """The run's loader for `rank` of `world`, configured as the trainer configures it."""
    from open_vlm.data.build import build_model_loader
    from open_vlm.tokenize.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else None
    bundle = model_bundle(cfg, tokenizer)
    global_batch = cfg.train.global_batch_size or cfg.data.batch_size * world * cfg.train.accum_steps
    loader = build_model_loader(
        cfg.data,
        seed=cfg.train.seed,
        global_batch=global_batch,
        bundle=bundle,
        tokenizer=tokenizer,
        rank=rank,
        world=world,
    )
    loader.settings.pin_memory = cfg.train.device != "cpu" and torch.cuda.is_available()  # as the trainer does
    loader.settings.profile = profile
    return loader


def report(result: BenchResult, loader: ShardLoader, profile: bool) -> list[str]:
    """The lines `open-vlm data bench` prints."""
    s = loader.settings
    lines = [
        f"loader: rank {s.rank} of {s.world}, {s.num_workers} worker(s), micro-batch {s.micro_batch} x "
        f"{loader.accum_steps} accumulation, image {s.image_size} px, {len(loader.sources)} source(s)",
        f"time to first batch {result.first_batch_s:.2f} s",
        f"{result.samples_per_s:.1f} samples/s, {result.batches_per_s:.2f} batches/s, {result.tokens_per_s:.0f} "
        f"tokens/s ({result.samples} samples in {result.seconds:.1f} s after the first batch; "
        f"{result.bad_samples} bad)",
    ]
    if profile:
        total = result.samples + s.micro_batch  # the stages also timed the first batch
        per = {k: 1e3 * v / max(total, 1) for k, v in result.stages.items()}
        workers = ", ".join(f"{k} {per.get(k, 0.0):.2f}" for k in WORKER_STAGES)
        main = ", ".join(f"{k} {per.get(k, 0.0):.2f}" for k in MAIN_STAGES if k != "pin" or s.pin_memory)
        lines.append(f"workers, ms per sample (summed over workers): {workers}")
        lines.append(f"main process, ms per sample: {main}")
    return lines


def main(argv: list[str]) -> int:
    """Entry point of `open-vlm data bench` (run under `run_main` by the CLI)."""
    from open_vlm.config.load import load_run_config
    from open_vlm.config.validate import check_inputs

    args, overrides = parser().parse_known_args(argv)
    if args.steps < 1:
        raise ConfigError(f"--steps: {args.steps} must be at least 1")
    if args.world is not None and args.world < 1:
        raise ConfigError(f"--world: {args.world} must be at least 1")
    world = args.world or int(os.environ.get("WORLD_SIZE", "1"))
    rank = args.rank if args.rank is not None else int(os.environ.get("RANK", "0"))
    if not 0 <= rank < world:
        raise ConfigError(f"--rank {rank} must be in [0, {world}) (--world {world})")
    extra = ["--data.num_workers", str(args.workers)] if args.workers is not None else []
    cfg = load_run_config(["--config", args.config, *overrides, *extra])
    if not cfg.data.sources:
        raise ConfigError(f"{args.config}: data.sources is empty: nothing to benchmark (add a source with urls)")
    check_inputs(cfg, "train", world=world)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    loader = build(cfg, rank, world, args.profile)
    result = measure(loader, args.steps)
    for line in report(result, loader, args.profile):
        print(line)
    return 0
