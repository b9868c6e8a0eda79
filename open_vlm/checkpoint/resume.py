"""Which config changes break an exact resume, and refusing them unless the user allows it."""

from __future__ import annotations

import dataclasses
import logging

from open_vlm.config.load import config_from_yaml_text
from open_vlm.config.schema import RunConfig

log = logging.getLogger(__name__)


class ResumeRefused(ValueError):
    """The run config changed in a way that would not continue the checkpointed run."""


def resume_fingerprint(cfg: RunConfig) -> dict:
    """The settings the sample order and the batch composition depend on."""
    return {
        "train.seed": cfg.train.seed,
        "train.global_batch_size": cfg.train.global_batch_size,
        "data.sources": [
            {k: v for k, v in dataclasses.asdict(s).items() if k in ("name", "urls", "weight", "modality")}
            for s in cfg.data.sources
        ],
        "data.num_streams": cfg.data.num_streams,
        "data.mixing": cfg.data.mixing,
        "data.shuffle_window": cfg.data.shuffle_window,
        "model.kind": cfg.model.kind,
    }


def check_resumable(meta: dict, cfg: RunConfig, allow: bool = False) -> None:
    """Raise `ResumeRefused` naming each changed setting, unless `allow` (then warn)."""
    saved = resume_fingerprint(config_from_yaml_text(meta["config"]))
    now = resume_fingerprint(cfg)
    changed = [f"{k}: {saved[k]!r} -> {now[k]!r}" for k in saved if saved[k] != now[k]]
    if not changed:
        return
    message = "config changed since the checkpoint in ways that break resume: " + "; ".join(changed)
    if not allow:
        raise ResumeRefused(message + " (set checkpoint.allow_config_change true to resume anyway)")
    log.warning("%s (allowed by checkpoint.allow_config_change)", message)
