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
    """Normalised image/text embeddings, the exponentiated scale and (SigLIP) the bias the contrastive losses take.

    The scale and bias reach the loss in fp32 with their exact values under every strategy (`_fp32_logit_params`)."""
    core = getattr(model, "module", model)  # DDP wraps; FSDP2 keeps the module itself
    if hasattr(core, "set_reshard_after_forward"):
        # FSDP2 root: a forward without backward (evaluation) leaves its parameters gathered; shard them again so
        # that the clamp and the fp32 read below act on the fp32 parameters, not on a bf16 copy.
        core.reshard()
    clamp_logit_scale(core)
    names = [n for n in ("logit_scale", "logit_bias") if getattr(core, n, None) is not None]
    exact = {n: _full_fp32(getattr(core, n)) for n in names}
    if hasattr(core, "set_reshard_after_forward"):
        # FSDP2 root: the scale and bias are read after the forward, so they must still be gathered then
        # (FSDP2's own default for a root; train.reshard_after_forward sets every unit's explicitly).
        core.set_reshard_after_forward(False, recurse=False)
    out = model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch.get("attention_mask")
    )
    params = {n: _fp32_logit_param(getattr(core, n), exact[n]) for n in names}
    outputs = {
        "image_features": out.image_embeds,
        "text_features": out.text_embeds,
        "logit_scale": params["logit_scale"].exp().squeeze(),
    }
    if "logit_bias" in params:
        outputs["logit_bias"] = params["logit_bias"].squeeze()
    return outputs


def _full_fp32(param: torch.Tensor) -> torch.Tensor:
    """The whole value of a parameter as stored (an FSDP2 shard is gathered), without gradient."""
    with torch.no_grad():
        return (param.full_tensor() if hasattr(param, "full_tensor") else param.detach()).float()


def _fp32_logit_param(used: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """The parameter the forward used (under FSDP2 with bf16, its bf16 copy) carrying the stored fp32 value.

    FSDP2's mixed precision casts every parameter, the scale and bias too: -10.03 would reach the loss as -10.0
    (bf16 spacing near 10 is 0.0625, so small bias updates would never show). The value is the fp32 one, the
    gradient still flows to the copy FSDP2 reduces (so it is rounded to bf16 there, like every gradient)."""
    if used.dtype == exact.dtype:
        return used
    used32 = used.float()
    return used32 + (exact - used32).detach()


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
