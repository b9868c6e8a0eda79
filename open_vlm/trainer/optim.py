"""AdamW with weight-decay exclusions, and the learning-rate schedule as a pure function."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from open_vlm.config.schema import OptimConfig


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of `cfg.lr` at optimizer step `step` (0-based): linear warmup, then decay to the floor."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters, with no weight decay on biases, norms and embeddings (1-D or embedding tables)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embed" in name or "norm" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig, max_steps: int):
    fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max_steps, cfg))
    return optimizer, scheduler
