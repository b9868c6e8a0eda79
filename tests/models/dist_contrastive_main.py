"""Run by tests/models/test_dist_contrastive.py under `torchrun --nproc_per_node=2` (gloo).

For CLIP (both `local_loss` modes) and SigLIP (every exchange mode), wrapped by the project's DDP and FSDP2
strategies, each rank takes half of a global batch of 8 and runs forward + loss + backward as the trainer does.
Rank 0 also runs the unwrapped model in one process on the valid rows of the global batch. Rank 0 writes, per
case and validity pattern: the mean of the ranks' losses (what the trainer logs), the reference loss, gradient
differences, open_clip's per-rank loss on all-valid batches, and the logit scale after clamping.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys

import torch
import torch.distributed as dist

from open_vlm.config.schema import ModelConfig, TrainConfig
from open_vlm.models.losses import build_loss
from open_vlm.models.registry import build_model
from open_vlm.trainer.parallel import build_strategy, init_distributed, shutdown_distributed

CONFIGS = {"clip": "configs/models/clip_tiny.yaml", "siglip": "configs/models/siglip_tiny.yaml"}
CASES = [("clip", {"local_loss": False}), ("clip", {"local_loss": True})]
CASES += [("siglip", {"dist_impl": impl}) for impl in ("bidir", "shift", "reduce", "gather")]
# rows 0-3 on rank 0, 4-7 on rank 1; an invalid row is a copy of a valid one, as the loader makes it
PATTERNS = {
    "all_valid": [True] * 8,
    "some_invalid": [True, False, True, True, True, False, False, True],
    "rank1_invalid": [True, True, False, True, False, False, False, False],
    "none_valid": [False] * 8,
}
SOURCE = [0, 0, 2, 3, 4, 4, 4, 7]  # the row an invalid row copies (where valid, itself)


def global_batch(vocab: int, valid: list[bool]) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(8, 3, 32, 32, generator=g),
        "input_ids": torch.randint(5, vocab, (8, 16), generator=g),
        "attention_mask": torch.ones(8, 16, dtype=torch.long),
    }
    rows = [i if ok else SOURCE[i] for i, ok in enumerate(valid)]
    batch = {k: v[rows] for k, v in batch.items()}
    batch["valid"] = torch.tensor(valid)
    return batch


def rows(batch: dict, index) -> dict:
    return {k: v[index] for k, v in batch.items()}


def full_grads(model) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as one plain tensor (FSDP2 DTensors gathered: a collective)."""
    out = {}
    for name, p in model.named_parameters():
        grad = p.grad
        if grad is not None and hasattr(grad, "full_tensor"):
            grad = grad.full_tensor()
        out[name.removeprefix("module.")] = None if grad is None else grad.detach().clone()
    return out


def full_value(param) -> torch.Tensor:
    return (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().clone()


def open_clip_loss(kind: str, options: dict, outputs: dict, rank: int, world: int) -> float:
    from open_clip.loss import ClipLoss, SigLipLoss

    args = [outputs[k].detach() for k in ("image_features", "text_features", "logit_scale")]
    if kind == "clip":
        return float(ClipLoss(gather_with_grad=True, rank=rank, world_size=world, **options)(*args))
    return float(SigLipLoss(rank=rank, world_size=world, **options)(*args, outputs["logit_bias"].detach()))


def main(out_path: str) -> None:
    info = init_distributed("cpu")
    rank, world = info.rank, info.world
    records = []
    for strategy_name in ("ddp", "fsdp"):
        for kind, options in CASES:
            torch.manual_seed(0)
            bundle = build_model(ModelConfig(kind=kind, config=CONFIGS[kind]))
            with torch.no_grad():
                bundle.model.logit_scale.fill_(5.0)  # above ln 100: the forward must clamp it
            reference = copy.deepcopy(bundle.model).eval() if rank == 0 else None
            strategy = build_strategy(TrainConfig(strategy=strategy_name, device="cpu"), info)
            model = strategy.wrap(bundle.model, bundle.shard_units).eval()  # eval: no dropout, same math
            loss_fn = build_loss(kind, rank=rank, world_size=world, **options)
            core = getattr(model, "module", model)
            vocab = core.config.text_config.vocab_size
            for pattern, valid in PATTERNS.items():
                batch = global_batch(vocab, valid)
                local = rows(batch, slice(4 * rank, 4 * rank + 4))
                model.zero_grad(set_to_none=True)
                outputs = bundle.forward(model, local)
                result = loss_fn(outputs, local)
                oc = open_clip_loss(kind, options, outputs, rank, world) if pattern == "all_valid" else None
                result.loss.backward()
                per_rank = [None] * world
                dist.all_gather_object(per_rank, (float(result.loss.detach()), oc))
                grads = full_grads(model)
                scale = float(full_value(core.logit_scale).reshape(-1)[0])
                if rank != 0:
                    continue
                record = {"strategy": strategy_name, "kind": kind, "options": options, "pattern": pattern}
                record["loss"] = sum(loss for loss, _ in per_rank) / world  # what the trainer logs
                record["ours_per_rank"] = [loss for loss, _ in per_rank]
                record["open_clip_per_rank"] = [o for _, o in per_rank]
                record["logit_scale"] = scale
                reference.zero_grad(set_to_none=True)
                keep = torch.tensor(valid)
                if keep.any():
                    sub = rows(batch, keep)
                    ref = build_loss(kind, **options)(bundle.forward(reference, sub), sub)
                    ref.loss.backward()
                    record["reference_loss"] = float(ref.loss.detach())
                else:
                    record["reference_loss"] = 0.0
                ref_grads = {n: p.grad for n, p in reference.named_parameters()}
                diffs, norms = [], []
                for name, grad in grads.items():
                    want = ref_grads[name]
                    want = torch.zeros_like(grad) if want is None else want.reshape(grad.shape)
                    diffs.append(float((grad - want).abs().max()))
                    norms.append(float(want.abs().max()))
                record["max_grad_diff"], record["max_grad"] = max(diffs), max(norms)
                record["all_grads_finite"] = all(torch.isfinite(g).all() for g in grads.values())
                records.append(record)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"records": records, "max_logit_scale": math.log(100.0)}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()  # main's models out of reach: the groups freed, their gloo threads joined
    # A group that this harness's DDP/FSDP objects still hold from C++ (seen after DDP's backward without an
    # optimizer) would meet a finalising interpreter and could abort the process after it wrote its JSON. The
    # library's own entry points leave none (tests/trainer/test_parallel.py); this harness needs only its output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
