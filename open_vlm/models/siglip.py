"""`siglip`: transformers' SiglipModel (contrastive image + text towers), and its vision features."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import ModelBundle, Outputs, register_model
from open_vlm.models.spec import pretrained_or_config

# The paper's and open_clip's start for the logit scale and bias (t = 10, b = -10); transformers starts at 1, 0.
INIT_LOGIT_SCALE, INIT_LOGIT_BIAS = math.log(10.0), -10.0
MAX_LOGIT_SCALE = math.log(100.0)  # open_clip clamps the (log) scale to [0, ln 100] after every step

GROUPS = {
    "vision": ["vision_model."],
    "text": ["text_model."],
    "embeddings": ["text_model.embeddings.", "vision_model.embeddings."],
    "logit": ["logit_scale", "logit_bias"],
}


def siglip_config(spec: dict, tokenizer=None):
    """A SiglipConfig from `{vision: {...}, text: {...}}`, the text vocabulary sized to the tokenizer."""
    from transformers import SiglipConfig

    text = dict(spec["text"])
    if tokenizer is not None:
        text["vocab_size"] = len(tokenizer)
        text.setdefault("pad_token_id", tokenizer.pad_token_id)
    return SiglipConfig(text_config=text, vision_config=dict(spec["vision"]))


def vision_features(tower: nn.Module, pixel_values: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Patch features (B, N, C) of a SigLIP vision tower: the final output (-1) or `hidden_states[layer]`."""
    if layer == -1:
        return tower(pixel_values).last_hidden_state
    return tower(pixel_values, output_hidden_states=True).hidden_states[layer]


def clamp_logit_scale(model: nn.Module) -> None:
    """Clamp the (log) logit scale to [0, ln 100] in place, as open_clip does after every optimizer step.

    Done before each forward, so every forward sees the value open_clip's would (a DTensor shard under FSDP2)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


def stock_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict to export: `logit_scale` clamped as training's forwards used it."""
    state = dict(model.state_dict())
    state["logit_scale"] = state["logit_scale"].clamp(0.0, MAX_LOGIT_SCALE)
    return state


def contrastive_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Outputs:
    """Normalised image/text embeddings, the exponentiated scale and (SigLIP) the bias the contrastive losses take."""
    core = getattr(model, "module", model)  # DDP wraps; FSDP2 keeps the module itself
    clamp_logit_scale(core)
    if hasattr(core, "set_reshard_after_forward"):
        # FSDP2 root: the scale and bias are read after the forward, so they must still be gathered then
        # (FSDP2's own default for a root; train.reshard_after_forward sets every unit's explicitly).
        core.set_reshard_after_forward(False, recurse=False)
    out = model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch.get("attention_mask")
    )
    outputs = {
        "image_features": out.image_embeds,
        "text_features": out.text_embeds,
        "logit_scale": core.logit_scale.exp().squeeze(),
    }
    if getattr(core, "logit_bias", None) is not None:
        outputs["logit_bias"] = core.logit_bias.squeeze()
    return outputs


def bundle(model) -> ModelBundle:
    """The `ModelBundle` of a SiglipModel."""
    vision = model.config.vision_config
    return ModelBundle(
        model=model,
        kind="siglip",
        image_size=vision.image_size,
        num_image_tokens=0,
        shard_units=[model.vision_model, *model.text_model.encoder.layers],
        task="contrastive",
        groups={name: list(prefixes) for name, prefixes in GROUPS.items()},
        forward=contrastive_forward,
    )


@register_model("siglip")
def build_siglip(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """SigLIP from `cfg.pretrained`, an open_clip checkpoint (`cfg.open_clip_model`) or `cfg.config`."""
    from transformers import SiglipModel

    if cfg.open_clip_model and not cfg.pretrained:
        from open_vlm.models.open_clip_siglip import siglip_from_open_clip

        return bundle(siglip_from_open_clip(cfg.open_clip_model, cfg.open_clip_checkpoint))
    model = pretrained_or_config(SiglipModel, cfg, tokenizer, siglip_config)
    if not cfg.pretrained:  # a fresh model starts where the paper's does
        with torch.no_grad():
            model.logit_scale.fill_(INIT_LOGIT_SCALE)
            model.logit_bias.fill_(INIT_LOGIT_BIAS)
    return bundle(model)
