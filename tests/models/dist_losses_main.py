"""Run by tests/models/test_dist_contrastive.py under `torchrun --nproc_per_node=2` (gloo, CPU).

1. LXMERT (mean-reduced loss) under the project's DDP strategy: rank 0 holds 4 valid rows, rank 1 holds 4
   invalid copies (`valid` False). Rank 0 compares the averaged gradient with one process on the 4 valid rows.
2. SigLIP under the project's FSDP2 strategy with `train.precision bf16`: the dtype and value of the
   `logit_scale` / `logit_bias` the loss receives from `contrastive_forward`, vs the fp32 parameters.
3. A CLIP checkpoint with a 0-D `logit_scale` resumed under FSDP2.
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


def flat_grads(model) -> torch.Tensor:
    out = []
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0].removeprefix("module.")):
        g = p.grad
        if g is not None and hasattr(g, "full_tensor"):
            g = g.full_tensor()
        out.append(torch.zeros(p.numel()) if g is None else g.detach().flatten().float())
    return torch.cat(out)


def lxmert_case(info) -> dict:
    from tests.models.test_invalid_rows import setup
    from tests.tokenize.conftest import make_word_tokenizer

    bundle, loss_name, processor, collate, samples = setup("lxmert", make_word_tokenizer())
    good = [processor(s) for s in samples]
    reference = copy.deepcopy(bundle.model).eval()
    strategy = build_strategy(TrainConfig(strategy="ddp", device="cpu"), info)
    model = strategy.wrap(bundle.model, bundle.shard_units).eval()
    loss_fn = build_loss(loss_name, rank=info.rank, world_size=info.world)
    rows = good if info.rank == 0 else [{**g, "__valid__": False} for g in good]
    batch = collate(rows)
    loss = loss_fn(bundle.forward(model, batch), batch)
    loss.loss.backward()  # DDP averages over the 2 ranks, as the trainer's mean-reduced path relies on
    ddp = flat_grads(model)
    clean = collate(good)
    ref = build_loss(loss_name)(bundle.forward(reference, clean), clean)
    ref.loss.backward()
    want = flat_grads(reference)
    return {
        "norm_ratio": float(ddp.norm() / want.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(ddp, want, 0)),
    }


def siglip_case(info) -> dict:
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="siglip", config="configs/models/siglip_tiny.yaml"))
    with torch.no_grad():  # trained values: a scale just under the clamp, a bias off the bf16 grid
        bundle.model.logit_scale.fill_(math.log(100.0) - 0.01)
        bundle.model.logit_bias.fill_(-10.03)
    strategy = build_strategy(TrainConfig(strategy="fsdp", device="cpu", precision="bf16"), info)
    model = strategy.wrap(bundle.model, bundle.shard_units)
    g = torch.Generator().manual_seed(info.rank)
    batch = {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        "input_ids": torch.randint(5, 60, (2, 16), generator=g),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    out = bundle.forward(model, batch)
    return {
        "scale_dtype": str(out["logit_scale"].dtype),
        "scale": float(out["logit_scale"]),
        "scale_fp32": math.exp(math.log(100.0) - 0.01),
        "bias_dtype": str(out["logit_bias"].dtype),
        "bias": float(out["logit_bias"]),
        "bias_fp32": -10.03,
    }


def old_clip_case(info, path: str) -> dict:
    """A CLIP checkpoint with a 0-D `logit_scale` (written by one process, as before the (1,) shape) resumed
    under FSDP2 on 2 ranks: the scale and its Adam moment arrive sharded like the parameter."""
    import torch.nn as nn

    from open_vlm.checkpoint.dcp_io import load_model_and_optimizer, save_model_and_optimizer

    config = ModelConfig(kind="clip", config="configs/models/clip_tiny.yaml")
    solo = dist.new_group([0])  # every rank creates it; rank 0 alone saves
    if info.rank == 0:
        old = build_model(config).model
        old.logit_scale = nn.Parameter(torch.tensor(3.3))
        optimizer = torch.optim.AdamW(old.parameters())
        (old.logit_scale * 2.0).backward()
        optimizer.step()
        save_model_and_optimizer(path, old, optimizer, group=solo)
        saved = float(old.logit_scale.detach()), float(optimizer.state[old.logit_scale]["exp_avg"])
    dist.barrier()
    strategy = build_strategy(TrainConfig(strategy="fsdp", device="cpu"), info)
    bundle = build_model(config)
    model = strategy.wrap(bundle.model, bundle.shard_units)
    optimizer = torch.optim.AdamW(model.parameters())
    load_model_and_optimizer(path, model, optimizer)
    scale = model.logit_scale
    moment = optimizer.state[scale]["exp_avg"]
    record = {
        "scale": scale.full_tensor().tolist(),
        "moment": moment.full_tensor().tolist() if hasattr(moment, "full_tensor") else moment.tolist(),
    }
    if info.rank == 0:
        record["saved_scale"], record["saved_moment"] = saved
    return record


def main(out_path: str) -> None:
    info = init_distributed("cpu")
    record = {"lxmert": lxmert_case(info), "siglip_fsdp_bf16": siglip_case(info)}
    record["old_clip_fsdp"] = old_clip_case(info, out_path + ".old_clip_ckpt")
    if info.rank == 0:
        with open(out_path, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()  # main's models out of reach: the groups freed, their gloo threads joined
    # A group that this harness's DDP/FSDP objects still hold from C++ (seen after DDP's backward without an
    # optimizer) would meet a finalising interpreter and could abort the process after it wrote its JSON. The
    # library's own entry points leave none (tests/trainer/test_parallel.py); this harness needs only its output.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
