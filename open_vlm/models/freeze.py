"""Freezing parameters by named group or glob, keeping frozen ones in a cheaper dtype, counting them.

Fully frozen submodules run in eval mode even while the model trains (no dropout: a frozen encoder gives the
same features every time, as a feature extractor should); `keep_frozen_in_eval` makes it so whoever calls
`model.train()`.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from open_vlm.config.schema import ModelConfig

log = logging.getLogger(__name__)

FROZEN_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def select(model: nn.Module, groups: dict[str, list[str]], patterns: list[str]) -> set[str]:
    """Names of parameters matched by `patterns`: each a group name (all its prefixes) or a glob over names."""
    names = [name for name, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in groups:
            hit = {n for n in names if any(n.startswith(prefix) for prefix in groups[pattern])}
        else:
            hit = set(fnmatch.filter(names, pattern))
        if not hit:
            raise ValueError(
                f"model.freeze/unfreeze entry '{pattern}' matches no parameter "
                f"(groups: {sorted(groups)}; globs match names like '{names[0] if names else ''}')"
            )
        chosen |= hit
    return chosen


def apply_freeze(model: nn.Module, groups: dict[str, list[str]], freeze: list[str], unfreeze: list[str] = ()) -> None:
    """Set `requires_grad=False` on `freeze` matches, then back to True on `unfreeze` matches."""
    frozen = select(model, groups, list(freeze)) - select(model, groups, list(unfreeze))
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)


def check_frozen_dtype(frozen_dtype: str, precision: str) -> None:
    """Refuse `model.frozen_dtype bf16` without a low-precision `train.precision` (nothing would cast between them)."""
    if frozen_dtype != "fp32" and precision == "fp32":
        raise ValueError(
            f"model.frozen_dtype {frozen_dtype} needs train.precision bf16 or fp16: under fp32 nothing casts "
            f"between frozen {frozen_dtype} and trainable fp32 weights (set model.frozen_dtype fp32)"
        )


def frozen_submodules(model: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters (at least one) are all frozen."""
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params):
        return [model]
    return [m for child in model.children() for m in frozen_submodules(child)]


def _eval_if_frozen(module: nn.Module, args) -> None:
    if module.training and not any(p.requires_grad for p in module.parameters()):
        module.eval()


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Before each forward, a fully frozen submodule that `model.train()` put in training mode goes back to eval."""
    for module in frozen_submodules(model):
        module.register_forward_pre_hook(_eval_if_frozen)


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Store frozen floating-point parameters in `dtype` (trainable ones keep theirs).

    Needs `train.precision bf16|fp16` (`check_frozen_dtype`): autocast (or FSDP's mixed precision) casts between
    the two; the `vlm` kind also casts its own inputs between parts.
    """
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)


@dataclass(frozen=True)
class GroupCount:
    """Trainable and frozen parameter counts of one group."""

    group: str
    trainable: int
    frozen: int


def owner_group(name: str, groups: dict[str, list[str]]) -> str:
    """The group whose longest prefix matches `name` (`other` when none does)."""
    best, best_len = "other", -1
    for group, prefixes in groups.items():
        for prefix in prefixes:
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = group, len(prefix)
    return best


def parameter_table(model: nn.Module, groups: dict[str, list[str]]) -> list[GroupCount]:
    """Per-group trainable/frozen counts, each parameter counted once (in its most specific group)."""
    counts: dict[str, list[int]] = {group: [0, 0] for group in groups}
    for name, param in model.named_parameters():
        row = counts.setdefault(owner_group(name, groups), [0, 0])
        row[0 if param.requires_grad else 1] += param.numel()
    rows = [GroupCount(group, t, f) for group, (t, f) in counts.items() if t or f]
    total_t, total_f = sum(r.trainable for r in rows), sum(r.frozen for r in rows)
    return [*rows, GroupCount("total", total_t, total_f)]


def format_parameter_table(rows: list[GroupCount]) -> str:
    """The table as aligned text lines."""
    width = max(len("group"), *(len(r.group) for r in rows))
    lines = [f"{'group':<{width}} {'trainable':>12} {'frozen':>12}"]
    lines += [f"{r.group:<{width}} {r.trainable:>12,} {r.frozen:>12,}" for r in rows]
    return "\n".join(lines)


def log_parameter_table(rows: list[GroupCount]) -> None:
    log.info("parameters:\n%s", format_parameter_table(rows))


def freeze_from_config(bundle, cfg: ModelConfig) -> list[GroupCount]:
    """Apply `cfg.freeze`/`cfg.unfreeze`/`cfg.frozen_dtype` to `bundle.model`; log and return the table."""
    apply_freeze(bundle.model, bundle.groups, [*bundle.default_freeze, *cfg.freeze], cfg.unfreeze)
    if bundle.default_freeze:
        log.info("frozen without a training signal unless model.unfreeze names them: %s", bundle.default_freeze)
    keep_frozen_in_eval(bundle.model)
    try:
        dtype = FROZEN_DTYPES[cfg.frozen_dtype]
    except KeyError:
        raise ValueError(f"model.frozen_dtype must be one of {sorted(FROZEN_DTYPES)}") from None
    cast_frozen(bundle.model, dtype)
    rows = parameter_table(bundle.model, bundle.groups)
    log_parameter_table(rows)
    return rows
