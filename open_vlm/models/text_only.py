"""Text-only batches through the vision-language kinds (`paligemma`, `vlm`): the language model alone.

A batch without `pixel_values` (a text source of a mixture, or a batch whose rows all lack images) has no image
tokens and trains the language model alone. Two things make that safe:

- PaliGemma builds its attention from `token_type_ids`; without them its SDPA path is not causal (transformers
  5.x), so a call that carries none gets token type 1 (causal) everywhere: text-only rows, and every row of the
  `causal_lm` and `chat_lm` tasks (their batches have no token types; images included).
- DDP wants a gradient for every trainable parameter at every step (it fails on the next step otherwise). So in
  training the vision tower and projector still run, on one blank image, and enter the output at weight zero:
  their gradients are exactly 0 and the loss is unchanged. (FSDP2 would tolerate the unused tower; the tie runs
  under every strategy so that they all train alike: AdamW moves a parameter with a zero gradient, not one
  without.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn


def any_trainable(modules: Iterable[nn.Module]) -> bool:
    return any(p.requires_grad for m in modules for p in m.parameters())


def zero_weight_vision(features: Callable[[torch.Tensor], torch.Tensor], image_size: int, like: torch.Tensor):
    """0 x the image features of one blank image: a scalar that ties the vision parameters into the graph."""
    pixels = torch.zeros(1, 3, image_size, image_size, device=like.device)
    return features(pixels).float().sum() * 0.0


def needs_vision_tie(module: nn.Module, vision_modules: Iterable[nn.Module], kwargs: dict) -> bool:
    """A training forward (with grad) without images, whose vision parameters are trainable."""
    return (
        module.training
        and torch.is_grad_enabled()
        and kwargs.get("pixel_values") is None
        and kwargs.get("past_key_values") is None
        and any_trainable(vision_modules)
    )


def paligemma_text_only(module: nn.Module, args: tuple, kwargs: dict):
    """Forward pre-hook of a PaliGemmaForConditionalGeneration: causal token types and the vision tie (above).

    Every call without `token_type_ids` (text-only rows, and the `causal_lm` / `chat_lm` tasks, whose batches carry
    none, with or without images) gets token type 1 (causal) everywhere: transformers' PaliGemma is otherwise not
    causal under SDPA. Cached generation steps are left alone (their first call carried the types)."""
    ids = kwargs.get("input_ids")
    if args or ids is None or kwargs.get("past_key_values") is not None:
        return None
    if kwargs.get("token_type_ids") is None:
        kwargs["token_type_ids"] = torch.ones_like(ids)
    inner = module.model
    if kwargs.get("pixel_values") is None and needs_vision_tie(
        module, [inner.vision_tower, inner.multi_modal_projector], kwargs
    ):
        size = module.config.vision_config.image_size
        tie = zero_weight_vision(lambda px: inner.get_image_features(px).pooler_output, size, ids)
        embeds = module.get_input_embeddings()(ids)
        kwargs["inputs_embeds"] = embeds + tie.to(embeds.dtype)
        kwargs["input_ids"] = None
    return args, kwargs


def install_paligemma_hook(model: nn.Module) -> None:
    """Register `paligemma_text_only` once (before any FSDP / DDP wrapping: theirs run first)."""
    if not getattr(model, "_open_vlm_text_only", False):
        model.register_forward_pre_hook(paligemma_text_only, with_kwargs=True)
        model._open_vlm_text_only = True
