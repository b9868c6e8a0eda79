"""Which attention implementation a (wrapped, composed) model's language model runs.

Packed rows need no mask from us: `lm_forward` hands the model their restarting `position_ids` and transformers
derives the per-document mask for the implementation in use (see `models/registry.py`).
"""

from __future__ import annotations

import torch.nn as nn


def unwrap(model: nn.Module) -> nn.Module:
    """The module under torch.compile (`._orig_mod`) and DDP (`.module`) wrappers; FSDP2 keeps the module itself."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation of a model's language model (`eager`, `sdpa`, `flash_attention_2`, ...)."""
    lm = unwrap(model)
    lm = getattr(lm, "language_model", lm)  # the composed `vlm`
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm  # PaliGemma: its Gemma decoder
    return getattr(getattr(decoder, "config", None), "_attn_implementation", None)
