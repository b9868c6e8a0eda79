#!/usr/bin/env python
"""Trainer overhead: `Trainer.train_step` vs a bare PyTorch loop, same model, batches and AdamW.

    python bench/trainer.py                  # tiny PaliGemma on CPU, pre-built demo batches
    python bench/trainer.py --steps 50 --repeats 5
    python bench/trainer.py --gpu            # our Trainer (FSDP2, bf16) vs a bare autocast loop, PaliGemma-3B shape

Both loops start from the same weights and take the same pre-built micro-batches (no data loading), move
them to the device, normalise the uint8 images, sum the next-token loss, divide by the supervised-token
count, backward, clip the gradient norm, step AdamW (the trainer's parameter groups) and zero the grads.
Blocks of `--steps` alternate, `--repeats` times; medians of steps/s and their ratio are printed, and the
first losses of both loops are compared (they must agree: same maths).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import REPO, median


def build_trainer(work: Path, batch: int, accum: int):
    import yaml

    from open_vlm.config.load import load_run_config
    from open_vlm.trainer.loop import Trainer

    demo = work / "demo"
    if not (demo / "manifest.json").exists():
        import sys

        sys.path.insert(0, str(REPO / "tools"))
        from make_demo_data import main as make_demo

        make_demo(["--out", str(demo), "--num-shards", "2", "--per-shard", "64"])
    cfg = {
        "run": {"project": "bench", "name": "trainer", "output_dir": str(work / "runs")},
        "data": {
            "sources": [{"name": "shapes", "urls": [str(demo / "demo-{000000..000001}.tar")]}],
            "batch_size": batch,
            "max_text_len": 16,
            "num_streams": 8,
        },
        "model": {
            "kind": "paligemma",
            "config": str(REPO / "configs/models/paligemma_tiny.yaml"),
            "tokenizer": str(demo / "tokenizer"),
        },
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "train": {"seed": 0, "max_steps": 100_000, "global_batch_size": batch * accum, "device": "cpu"},
    }
    path = work / "trainer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Trainer(load_run_config(["--config", str(path)]), work / "runs" / "bench" / "trainer")


class BareLoop:
    """The loop a PyTorch user writes by hand, on a copy of the trainer's model and optimizer groups."""

    def __init__(self, trainer):
        import copy

        from open_vlm.data.decode import normalize_images

        self.normalize = normalize_images
        self.model = copy.deepcopy(trainer.model)
        self.device = trainer.info.device
        self.clip = trainer.cfg.optim.grad_clip
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        mine = dict(self.model.named_parameters())
        groups = []
        for group in trainer.optimizer.param_groups:
            groups.append(
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": [mine[names[id(p)]] for p in group["params"]],
                }
            )
        self.optimizer = torch.optim.AdamW(groups)

    def step(self, micro_batches: list[dict]) -> float:
        count = sum(b["num_supervised"] for b in micro_batches)
        total = 0.0
        for batch in micro_batches:
            pixels = self.normalize(batch["pixel_values"].to(self.device))
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                pixel_values=pixels,
                attention_mask=batch["attention_mask"].to(self.device),
                token_type_ids=batch["token_type_ids"].to(self.device),
            ).logits
            labels = batch["labels"].to(self.device)
            loss = (
                F.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
                )
                / count
            )
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip if self.clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total)


def cpu_bench(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="open_vlm_bench_trainer_"))
    trainer = build_trainer(work, args.batch, args.accum)
    bare = BareLoop(trainer)
    batches = iter(trainer.loader)
    steps = [[next(batches) for _ in range(trainer.loader.accum_steps)] for _ in range(args.steps)]
    ours_loss = [trainer.train_step(micro).loss for micro in steps[:3]]
    bare_loss = [bare.step(micro) for micro in steps[:3]]
    print(f"first losses: trainer {[round(x, 6) for x in ours_loss]}  bare {[round(x, 6) for x in bare_loss]}")

    # Step by step alternation: both loops see the same machine load (this VM is shared and noisy).
    ratios, ours, base = [], [], []
    for r in range(args.repeats):
        t_ours = t_base = 0.0
        for micro in steps:
            t0 = time.perf_counter()
            bare.step(micro)
            t1 = time.perf_counter()
            trainer.train_step(micro)
            t_base, t_ours = t_base + t1 - t0, t_ours + time.perf_counter() - t1
        base.append(len(steps) / t_base)
        ours.append(len(steps) / t_ours)
        ratios.append(ours[-1] / base[-1])
        print(f"  repeat {r}: bare {base[-1]:6.2f} steps/s, trainer {ours[-1]:6.2f} steps/s, ratio {ratios[-1]:.3f}")
    print(
        f"steps/s  trainer {median(ours):.2f}  bare {median(base):.2f}  ratio (median of repeats) {median(ratios):.3f}"
    )


PALIGEMMA_3B = {  # SigLIP So400m/14 at 224 px + Gemma-2B: PaliGemma-3B's shapes (our model config format)
    "vision": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "vision_use_head": False,
    },
    "text": {
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "num_hidden_layers": 18,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "max_position_embeddings": 8192,
    },
}
TINY = {  # the same code path in seconds on a CPU (`--tiny`): a smoke run, not a measurement
    "vision": {**PALIGEMMA_3B["vision"], "image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64}
    | {"num_hidden_layers": 2, "num_attention_heads": 2},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    | {"num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 256},
}


def gpu_run_config(work: Path, pattern: str, tokenizer: Path, spec: dict, args) -> Path:
    """The run config of the GPU bench: FSDP2 + bf16 on one device, the model of `spec`, the bench shards."""
    import yaml

    model_yaml = work / "model.yaml"
    model_yaml.write_text(yaml.safe_dump(spec))
    cfg = {
        "run": {"project": "bench", "name": "trainer_gpu", "output_dir": str(work / "runs")},
        "data": {
            "sources": [{"name": "bench", "urls": [pattern]}],
            "batch_size": args.gpu_batch,
            "max_text_len": args.gpu_text_len,
            "num_workers": args.workers,
            "num_streams": 8,
        },
        "model": {"kind": "paligemma", "config": str(model_yaml), "tokenizer": str(tokenizer)},
        "optim": {"lr": 1e-5, "warmup_steps": 0},
        "train": {
            "seed": 0,
            "max_steps": 100_000,
            "global_batch_size": args.gpu_batch,
            "strategy": "fsdp",
            "precision": "bf16",
            "device": args.device,
        },
        "logging": {"every_steps": 1_000_000},
    }
    path = work / "trainer_gpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def single_process_group(device: str) -> None:
    """A world of one (FSDP2 needs a process group; torchrun is not needed for one device)."""
    import os
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)


class AutocastLoop(BareLoop):
    """The bare loop a user writes for bf16: fp32 weights, autocast, fused AdamW on CUDA (no FSDP, no trainer)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, clip: float):
        from open_vlm.data.decode import normalize_images

        self.normalize, self.device, self.clip = normalize_images, device, clip
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=device.type == "cuda" or None)

    def step(self, micro_batches: list[dict]) -> float:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return super().step(micro_batches)


def rates(steps: int, seconds: float, positions: int, flops: float, peak: float | None) -> dict:
    """tokens/s (sequence positions), achieved TFLOP/s and MFU (None without a peak) of `steps` timed steps."""
    achieved = flops / seconds
    return {
        "steps_per_s": steps / seconds,
        "tokens_per_s": positions / seconds,
        "tflops": achieved / 1e12,
        "mfu": None if not peak else achieved / peak,
    }


def timed_steps(step, batches: list, warmup: int, device: torch.device) -> float:
    """Seconds for the batches after the first `warmup` (compilation, allocator, cuDNN autotuning excluded)."""
    for micro in batches[:warmup]:
        step(micro)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for micro in batches[warmup:]:
        step(micro)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def gpu_bench(args) -> dict:
    """`Trainer.train_step` (FSDP2, bf16) vs the bare autocast loop on the same real-loader batches, one device."""
    import gc

    from common import make_image_shards

    from open_vlm.config.load import load_run_config
    from open_vlm.models.registry import build_model
    from open_vlm.trainer.loop import Trainer
    from open_vlm.trainer.mfu import FlopCounter, peak_tflops
    from open_vlm.trainer.parallel import shutdown_distributed

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA (or --device cpu --tiny for a smoke run of the same code)")
    device = torch.device(args.device)
    spec = TINY if args.tiny else PALIGEMMA_3B
    work = Path(tempfile.mkdtemp(prefix="open_vlm_bench_trainer_gpu_"))
    size = 64 if args.tiny else (640, 480)
    shards = make_image_shards(args.data / ("tiny" if args.tiny else "640x480"), args.shards, args.per_shard, size)
    data = Path(shards).parent
    single_process_group(args.device)
    try:
        trainer = Trainer(
            load_run_config(["--config", str(gpu_run_config(work, shards, data / "tokenizer", spec, args))]),
            work / "runs" / "bench" / "trainer_gpu",
        )
        t0 = time.perf_counter()
        it = iter(trainer.loader)
        batches = [[next(it) for _ in range(trainer.loader.accum_steps)] for _ in range(args.warmup + args.steps)]
        print(f"{len(batches)} steps of batches from the real loader in {time.perf_counter() - t0:.1f}s")
        del it
        timed = batches[args.warmup :]
        positions = sum(b["input_ids"].numel() for micro in timed for b in micro)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        tflops = args.peak_tflops or (peak_tflops(name) if device.type == "cuda" else None)
        peak = tflops * 1e12 if tflops else None
        counter = FlopCounter(trainer.bundle.model)
        flops = sum(counter.batch_flops(b) for micro in timed for b in micro)
        params = sum(p.numel() for p in trainer.bundle.model.parameters())
        ours = rates(args.steps, timed_steps(trainer.train_step, batches, args.warmup, device), positions, flops, peak)
        cfg = trainer.cfg
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # one model with its optimizer at a time: 3B + AdamW twice would not fit
        bare = AutocastLoop(build_model(cfg.model, load_tokenizer_of(cfg)).model, device, cfg.optim.grad_clip)
        base = rates(args.steps, timed_steps(bare.step, batches, args.warmup, device), positions, flops, peak)
    finally:
        shutdown_distributed()  # the trainer is gone: its groups freed, their gloo threads joined
    print(f"{name}: {params / 1e9:.2f}B parameters, {len(timed[0])} x {tuple(timed[0][0]['input_ids'].shape)} per step")
    for label, r in (("trainer (FSDP2, bf16)", ours), ("bare loop (autocast)", base)):
        mfu = "n/a (no peak for this device)" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"{label:22s} {r['tokens_per_s']:10,.0f} tokens/s  {r['tflops']:7.1f} TFLOP/s  MFU {mfu}")
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    print(f"ratio trainer / bare {ratio:.3f}")
    return {"trainer": ours, "bare": base, "ratio": ratio}


def load_tokenizer_of(cfg):
    from open_vlm.tokenize.tokenizers import load_tokenizer

    return load_tokenizer(cfg.model.tokenizer)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive, default=30)
    parser.add_argument("--repeats", type=positive, default=3)
    parser.add_argument("--batch", type=positive, default=8)
    parser.add_argument("--accum", type=positive, default=2)
    parser.add_argument("--gpu", action="store_true", help="our Trainer (FSDP2, bf16) vs a bare loop, one device")
    parser.add_argument("--gpu-batch", type=positive, default=8)
    parser.add_argument("--gpu-text-len", type=int, default=64, help="data.max_text_len of the GPU bench")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="--gpu: cuda, or cpu with --tiny (a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="--gpu with a tiny model (tests, CPU)")
    parser.add_argument("--workers", type=int, default=4, help="--gpu: DataLoader workers")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "open_vlm_bench_trainer_gpu")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device table (dense bf16)")
    args = parser.parse_args(argv)
    gpu_bench(args) if args.gpu else cpu_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
