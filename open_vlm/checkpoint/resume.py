"""Which config changes break an exact resume (or make `init_from` pointless), and refusing them unless allowed."""

from __future__ import annotations

import dataclasses
import logging

from open_vlm.checkpoint.dcp_io import WeightsReport
from open_vlm.config.load import config_from_yaml_text
from open_vlm.config.schema import RunConfig
from open_vlm.data.augment import fingerprint as augment_fingerprint

log = logging.getLogger(__name__)

# `init_from` is refused when fewer than this share of the model's tensors are in the checkpoint.
MIN_INIT_SHARE = 0.5


class ResumeRefused(ValueError):
    """The run config changed in a way that would not continue the checkpointed run."""


def resume_fingerprint(cfg: RunConfig, model_config: dict | None = None) -> dict:
    """The settings the sample order, the batch composition, the numerics and the optimizer depend on.

    The optimizer's hyperparameters are here because a resume restores them from the checkpoint: a changed
    value would otherwise be silently ignored. When allowed, the trainer applies the new values.
    `model_config`: the content of the model config file (the architecture), when there is one.
    """
    return {
        "model.config": model_config,
        "train.seed": cfg.train.seed,
        "train.global_batch_size": cfg.train.global_batch_size,
        "train.precision": cfg.train.precision,
        "data.sources": [
            {k: v for k, v in dataclasses.asdict(s).items() if k in ("name", "urls", "weight", "modality")}
            for s in cfg.data.sources
        ],
        # A changed augmentation changes what the model sees (data/augment.py: None where nothing is augmented).
        "data.augment": augment_fingerprint(cfg.data),
        "data.num_streams": cfg.data.num_streams,
        "data.mixing": cfg.data.mixing,
        "data.shuffle_window": cfg.data.shuffle_window,
        "model.kind": cfg.model.kind,
        "optim.lr": cfg.optim.lr,
        "optim.group_lr": dict(cfg.optim.group_lr),
        "optim.weight_decay": cfg.optim.weight_decay,
        "optim.beta1": cfg.optim.beta1,
        "optim.beta2": cfg.optim.beta2,
        "optim.eps": cfg.optim.eps,
    }


def check_resumable(
    meta: dict, cfg: RunConfig, allow: bool = False, saved_model: dict | None = None, model: dict | None = None
) -> list[str]:
    """Raise `ResumeRefused` naming each changed setting, unless `allow` (then warn); returns the changed keys.

    `saved_model` / `model`: the model config contents of the checkpoint and of this run (compared when both
    exist; the file's path may differ, its content may not).
    """
    if saved_model is None or model is None:
        saved_model = model = None
    saved = resume_fingerprint(config_from_yaml_text(meta["config"]), saved_model)
    now = resume_fingerprint(cfg, model)
    changed = [k for k in now if saved.get(k) != now[k]]
    if not changed:
        return []
    message = "config changed since the checkpoint in ways that break resume: " + "; ".join(
        difference for k in changed for difference in _differences(k, saved.get(k), now[k])
    )
    if not allow:
        raise ResumeRefused(
            message + " (set checkpoint.allow_config_change true to resume anyway; new optim.* values then apply)"
        )
    log.warning("%s (allowed by checkpoint.allow_config_change)", message)
    return changed


def _differences(key: str, old, new) -> list[str]:
    """`key: old -> new`, or per nested key for two mappings (a model config: only what changed)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [f"{key}: {old!r} -> {new!r}"]
    out = []
    for k in sorted(set(old) | set(new), key=str):
        if old.get(k) != new.get(k):
            out += _differences(f"{key} {k}" if key == "model.config" else f"{key}.{k}", old.get(k), new.get(k))
    return out


def check_init_from(meta: dict, report: WeightsReport, cfg: RunConfig, source: str) -> None:
    """Refuse an `init_from` of another model kind or that loads too little, unless `allow_partial_init`."""
    problems = []
    kind = meta.get("model_kind")
    if kind and kind != cfg.model.kind:
        problems.append(f"it holds a {kind} model and this run builds {cfg.model.kind}")
    if report.loaded < MIN_INIT_SHARE * report.total:
        problems.append(f"only {report.loaded} of this model's {report.total} tensors are in it")
    if not problems:
        return
    message = f"checkpoint.init_from {source}: " + "; ".join(problems)
    if not cfg.checkpoint.allow_partial_init:
        raise ResumeRefused(message + " (set checkpoint.allow_partial_init true to start from it anyway)")
    log.warning("%s (allowed by checkpoint.allow_partial_init)", message)
