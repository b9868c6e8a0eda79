"""AdamW with weight-decay exclusions and per-group learning rates; the LR schedule as a pure function."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from open_vlm.config.schema import OptimConfig
from open_vlm.models.freeze import owner_group


def warmup_steps(cfg: OptimConfig, max_steps: int) -> int:
    """Warmup length in steps: `warmup_steps`, or `warmup_fraction` of the run."""
    return cfg.warmup_steps or int(round(cfg.warmup_fraction * max_steps))


def lr_factor(step: int, max_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base LR at optimizer step `step` (0-based): linear warmup, then decay to the floor."""
    warm = warmup_steps(cfg, max_steps)
    if warm and step < warm:
        return (step + 1) / warm
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "inverse_sqrt":
        return max(floor, math.sqrt(max(warm, 1) / (step + 1)))
    progress = min(1.0, (step - warm) / max(1, max_steps - warm))
    if cfg.schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine


def param_groups(model: nn.Module, cfg: OptimConfig, groups: dict[str, list[str]] | None = None) -> list[dict]:
    """Trainable parameters split by (LR group, decay): no weight decay on biases, norms and embeddings."""
    groups = groups or {}
    unknown = sorted(set(cfg.group_lr) - set(groups))
    if unknown:
        raise ValueError(f"optim.group_lr: unknown group(s) {unknown}; this model has {sorted(groups)}")
    buckets: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.replace("_orig_mod.", "").replace("module.", "", 1)
        decay = not (param.ndim < 2 or "embed" in clean or "norm" in clean)
        group = owner_group(clean, {g: groups[g] for g in cfg.group_lr})
        buckets.setdefault((None if group == "other" else group, decay), []).append(param)
    out = []
    for (group, decay), params in sorted(buckets.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        out.append(
            {
                "params": params,
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr": cfg.group_lr.get(group, cfg.lr) if group else cfg.lr,
                "group": group or "default",
            }
        )
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig, max_steps: int, groups: dict[str, list[str]] | None = None):
    """AdamW (fused on CUDA) over the trainable parameters, and a LambdaLR following `lr_factor`."""
    fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg, groups),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max_steps, cfg))
    return optimizer, scheduler


HYPERPARAMETERS = ("initial_lr", "weight_decay", "betas", "eps")  # what a loaded optimizer state overwrites


def group_hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict]:
    """The configured hyperparameters of each parameter group (base LR as `initial_lr`)."""
    return [{k: group[k] for k in HYPERPARAMETERS if k in group} for group in optimizer.param_groups]


def restore_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, configured: list[dict]) -> None:
    """After loading a checkpoint, apply this run's hyperparameters; the LR schedule continues from the new base."""
    if len(configured) != len(optimizer.param_groups):
        raise ValueError(
            f"the checkpoint's optimizer has {len(optimizer.param_groups)} parameter groups, this run's config "
            f"makes {len(configured)} (optim.group_lr changed?): cannot apply the new settings"
        )
    for group, hyper in zip(optimizer.param_groups, configured):
        group.update(hyper)
    scheduler.base_lrs = [hyper["initial_lr"] for hyper in configured]
    follow_schedule(optimizer, scheduler)


def follow_schedule(optimizer: torch.optim.Optimizer, scheduler) -> None:
    """Set each group's LR to this run's schedule at the scheduler's step (after loading a checkpoint)."""
    # A loaded optimizer carries the LR the *saved* schedule gave; a changed `train.max_steps` (extending a
    # run) changes the schedule, and the first resumed step must already follow the new one.
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
