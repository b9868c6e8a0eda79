"""A registry of model builders: `model.kind` → a function that makes a `ModelBundle`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from open_vlm.config.schema import ModelConfig


@dataclass
class ModelBundle:
    """A built model and what the rest of the library needs to know about it."""

    model: nn.Module
    kind: str
    image_size: int = 0  # input resolution (0: no images)
    num_image_tokens: int = 0  # image placeholder tokens per sample
    shard_units: list[nn.Module] = field(default_factory=list)  # modules FSDP wraps as units


Builder = Callable[[ModelConfig, object], ModelBundle]
_BUILDERS: dict[str, Builder] = {}


def register_model(kind: str) -> Callable[[Builder], Builder]:
    def add(fn: Builder) -> Builder:
        _BUILDERS[kind] = fn
        return fn

    return add


def model_kinds() -> list[str]:
    _import_builders()
    return sorted(_BUILDERS)


def build_model(cfg: ModelConfig, tokenizer=None) -> ModelBundle:
    """Build `cfg.kind` from `cfg.pretrained` (a save_pretrained dir, local or s3://) or `cfg.config`."""
    _import_builders()
    try:
        builder = _BUILDERS[cfg.kind]
    except KeyError:
        close = difflib.get_close_matches(cfg.kind, list(_BUILDERS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown model.kind '{cfg.kind}'{hint} (known: {sorted(_BUILDERS)})") from None
    return builder(cfg, tokenizer)


def _import_builders() -> None:
    from open_vlm.models import paligemma  # noqa: F401  (registers itself)
