"""Packed-document attention in the form each attention implementation reads.

A packed row holds several documents (`document_ids`, -1 on padding; `position_ids` restarting per document).
transformers passes a 4-D mask straight to the attention function, and the functions read it differently:
eager adds it to the scores (so it must be additive: 0 / dtype min; a bool mask would be added as 0 / 1), SDPA
takes a bool mask (True = attend). Flash and flex attention take no dense mask: they find the documents from the
restarting `position_ids` themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from open_vlm.tokenize.causal import additive_mask, block_causal_mask

# attention implementation → (document_ids → the mask it reads); absent: no mask, position ids only
MASK_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "eager": lambda document_ids: additive_mask(block_causal_mask(document_ids)),
    "sdpa": block_causal_mask,
}


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


def packed_attention_mask(model: nn.Module, document_ids: torch.Tensor) -> torch.Tensor | None:
    """The block-diagonal causal mask of packed rows in the form `model`'s attention reads (None: none needed)."""
    form = MASK_FORMS.get(attention_implementation(model) or "")
    return form(document_ids) if form is not None else None
