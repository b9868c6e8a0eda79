"""`clip`: transformers' CLIPModel (contrastive image + text towers, softmax logits, no bias)."""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn as nn

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import ModelBundle, Outputs, register_model
from open_vlm.models.spec import read_model_config
from open_vlm.storage import local_dir

GROUPS = {
    "vision": ["vision_model.", "visual_projection."],
    "text": ["text_model.", "text_projection."],
    "logit": ["logit_scale"],
}
# OpenAI CLIP's pixel statistics (SigLIP uses 0.5 / 0.5).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_forward(model: nn.Module, batch: Mapping) -> Outputs:
    """Normalised image/text embeddings and the exponentiated logit scale (the `clip` loss takes these)."""
    out = model(
        input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch.get("attention_mask")
    )
    core = getattr(model, "module", model)
    return {
        "image_features": out.image_embeds,
        "text_features": out.text_embeds,
        "logit_scale": core.logit_scale.exp().squeeze(),
    }


@register_model("clip")
def build_clip(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """CLIP from `cfg.pretrained` (a save_pretrained folder, local or s3://) or `cfg.config` ({vision, text})."""
    from transformers import CLIPConfig, CLIPModel

    if cfg.pretrained:
        model = CLIPModel.from_pretrained(str(local_dir(cfg.pretrained)), local_files_only=True)
    elif cfg.config:
        spec = read_model_config(cfg.config)
        text = dict(spec["text"])
        if tokenizer is not None and hasattr(tokenizer, "__len__"):
            text["vocab_size"] = len(tokenizer)
        rest = {k: v for k, v in spec.items() if k not in ("text", "vision")}  # projection_dim, ...
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(spec["vision"]), **rest))
    else:
        raise ValueError("model.kind clip needs model.pretrained or model.config")
    return ModelBundle(
        model=model,
        kind="clip",
        image_size=model.config.vision_config.image_size,
        shard_units=[model.vision_model, *model.text_model.encoder.layers],
        task="contrastive",
        groups={name: list(prefixes) for name, prefixes in GROUPS.items()},
        forward=clip_forward,
    )
