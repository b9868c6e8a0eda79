#!/usr/bin/env python
"""Trainer overhead: `Trainer.train_step` vs a bare PyTorch loop, same model, batches and AdamW.

    python bench/trainer.py                  # tiny PaliGemma on CPU, pre-built demo batches
    python bench/trainer.py --steps 50 --repeats 5
    python bench/trainer.py --gpu            # tokens/s and MFU of a PaliGemma-3B-shaped model in bf16 (CUDA)

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
    ours_loss = [trainer.train_step(steps[i]).loss for i in range(3)]
    bare_loss = [bare.step(steps[i]) for i in range(3)]
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


def paligemma_3b_config():
    """PaliGemma-3B shapes (SigLIP So400m/14 at 224 px + Gemma-2B), random init."""
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        vision_use_head=False,
    )
    text = GemmaConfig(
        hidden_size=2048,
        intermediate_size=16384,
        num_hidden_layers=18,
        num_attention_heads=8,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=257216,
        max_position_embeddings=8192,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=257152,
        projection_dim=2048,
        hidden_size=2048,
        vocab_size=257216,
    )
    config.text_config.num_image_tokens = 256
    config.vision_config.projection_dim = 2048
    return config


def gpu_bench(args) -> None:
    """Tokens/s and MFU (6·N·tokens/s over the GPU's dense bf16 peak) of a PaliGemma-3B-shaped model."""
    from transformers import PaliGemmaForConditionalGeneration

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    device = torch.device("cuda")
    model = PaliGemmaForConditionalGeneration(paligemma_3b_config()).to(device, torch.bfloat16).train()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    b, text = args.gpu_batch, args.gpu_text_len
    seq = 256 + text
    ids = torch.randint(0, 257000, (b, seq), device=device)
    ids[:, :256] = 257152
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": (ids != 257152).long(),
        "pixel_values": torch.randn(b, 3, 224, 224, device=device, dtype=torch.bfloat16),
    }
    labels = ids.masked_fill(ids == 257152, -100)

    def step():
        logits = model(**batch).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    tokens_s = args.steps * b * seq / (time.perf_counter() - t0)
    peak = args.peak_tflops * 1e12
    print(f"{torch.cuda.get_device_name()}: {params / 1e9:.2f}B params, batch {b} x {seq} tokens")
    print(
        f"tokens/s {tokens_s:,.0f}  MFU {6 * params * tokens_s / peak:.1%} (of {args.peak_tflops:.0f} TFLOP/s), "
        f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="PaliGemma-3B-shaped bf16 throughput on one GPU")
    parser.add_argument("--gpu-batch", type=int, default=8)
    parser.add_argument("--gpu-text-len", type=int, default=128)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    args = parser.parse_args(argv)
    gpu_bench(args) if args.gpu else cpu_bench(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
