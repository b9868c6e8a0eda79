"""A registry of model builders: `model.kind` → a function that makes a `ModelBundle`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from open_vlm.config.schema import ModelConfig
from open_vlm.names import lookup

log = logging.getLogger(__name__)

# What a model call returns for the loss: named tensors (`logits`, `image_features`, ...).
Outputs = Mapping[str, torch.Tensor]
ForwardFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], Outputs]


LM_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "pixel_values", "position_ids")


def lm_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Outputs:
    """Forward of a (vision-)language model: the batch's model inputs in, `{"logits": ...}` out.

    Packed rows (`document_ids`) reach the model as their restarting `position_ids` alone, without an attention
    mask: transformers then finds the documents from the positions (`masking_utils.find_packed_sequence_indices`)
    and builds each layer's own mask from them, for every attention implementation, sliding windows included
    (Mistral, Gemma 2/3, hence PaliGemma 2). A ready 4-D mask would be used as is, dropping the window."""
    inputs = {k: batch[k] for k in LM_INPUTS if k in batch}
    if "document_ids" in batch:
        inputs.pop("attention_mask", None)  # the collator's 4-D mask knows no sliding window
        if "position_ids" not in inputs:
            raise ValueError("packed rows (document_ids) need their position_ids")
    # No KV cache in training/eval forwards: it costs memory, and recomputed (checkpointed) layers would
    # append to it twice (and with a cache, transformers ignores packed position ids).
    return {"logits": model(**inputs, use_cache=False).logits}


@dataclass
class ModelBundle:
    """A built model and what the rest of the library needs to know about it."""

    model: nn.Module
    kind: str
    image_size: int = 0  # input resolution (0: no images)
    num_image_tokens: int = 0  # image placeholder tokens per sample
    shard_units: list[nn.Module] = field(default_factory=list)  # modules FSDP wraps as units
    task: str = "prefix_lm"  # which data processor feeds it: prefix_lm | chat_lm | contrastive | lxmert
    # Named parameter groups → parameter-name prefixes (freezing, per-group counts, per-group LR later).
    groups: dict[str, list[str]] = field(default_factory=dict)
    forward: ForwardFn = lm_forward  # (model, batch) → outputs the loss reads; pass the wrapped model
    # Parameters the kind's loss has no signal for (patterns as in `model.freeze`): frozen unless `model.unfreeze`
    # names them, so no trainable parameter goes without a gradient (DDP refuses that).
    default_freeze: list[str] = field(default_factory=list)


Builder = Callable[[ModelConfig, object], ModelBundle]
_BUILDERS: dict[str, Builder] = {}


def register_model(kind: str) -> Callable[[Builder], Builder]:
    """Decorator: register `fn(cfg, tokenizer) -> ModelBundle` under `kind`."""

    def add(fn: Builder) -> Builder:
        _BUILDERS[kind] = fn
        return fn

    return add


def model_kinds() -> list[str]:
    _import_builders()
    return sorted(_BUILDERS)


def build_model(cfg: ModelConfig, tokenizer=None) -> ModelBundle:
    """Build `cfg.kind` from `cfg.pretrained` (a save_pretrained dir, local or s3://) or `cfg.config`.

    Imports `cfg.module` first (a user's own kinds); then sets `cfg.attn_implementation`, applies `cfg.freeze` /
    `cfg.unfreeze` / `cfg.frozen_dtype` and logs the parameter table.
    """
    from open_vlm.checkpoint.dcp_safe import refusing_pickles
    from open_vlm.extensions import import_extension
    from open_vlm.models.freeze import freeze_from_config
    from open_vlm.models.spec import set_attention

    _import_builders()
    import_extension(cfg.module)  # a user's module registers its own kinds first
    with refusing_pickles(cfg.pretrained or cfg.open_clip_checkpoint or "the model's weights"):  # .bin / .pt files
        bundle = lookup(_BUILDERS, cfg.kind, "model.kind")(cfg, tokenizer)
    if cfg.attn_implementation:
        set_attention(bundle.model, cfg.attn_implementation)
    freeze_from_config(bundle, cfg)
    return bundle


def _import_builders() -> None:
    from open_vlm.models import clip, lxmert, paligemma, siglip, vlm  # noqa: F401  (each registers itself)
