"""`paligemma`: transformers' PaliGemmaForConditionalGeneration, from a save_pretrained dir or a config file."""

from __future__ import annotations

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import ModelBundle, register_model
from open_vlm.models.spec import pretrained_or_config
from open_vlm.models.text_only import install_paligemma_hook


def paligemma_config(spec: dict, tokenizer):
    """A PaliGemmaConfig from `{vision: {...}, text: {...}}`, sized to the tokenizer's vocabulary."""
    from transformers import GemmaConfig, PaliGemmaConfig, SiglipVisionConfig

    text = dict(spec["text"])
    vision = dict(spec["vision"])
    if tokenizer is not None:
        text["vocab_size"] = len(tokenizer)
    image_token = tokenizer.convert_tokens_to_ids("<image>") if tokenizer is not None else spec["image_token_index"]
    num_image_tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    text.setdefault("pad_token_id", getattr(tokenizer, "pad_token_id", 0))
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**vision).to_dict(),
        text_config=GemmaConfig(**text).to_dict(),
        image_token_index=image_token,
        projection_dim=text["hidden_size"],
        hidden_size=text["hidden_size"],
        vocab_size=text["vocab_size"],
    )
    config.text_config.num_image_tokens = num_image_tokens
    config.vision_config.projection_dim = text["hidden_size"]
    return config


GROUPS = {
    "vision": ["model.vision_tower."],
    "projector": ["model.multi_modal_projector."],
    "language": ["model.language_model.", "lm_head."],
    "embeddings": ["model.language_model.embed_tokens."],
    "lm_head": ["lm_head."],  # tied to the embeddings in Gemma: then it has no parameter of its own
}


def bundle(model) -> ModelBundle:
    """The `ModelBundle` of a PaliGemmaForConditionalGeneration."""
    vision = model.config.vision_config
    inner = model.model
    install_paligemma_hook(model)  # text-only batches: causal token types, vision kept in the graph
    units = [inner.vision_tower, *inner.language_model.layers]
    return ModelBundle(
        model=model,
        kind="paligemma",
        image_size=vision.image_size,
        num_image_tokens=(vision.image_size // vision.patch_size) ** 2,
        shard_units=units,
        task="prefix_lm",
        groups={name: list(prefixes) for name, prefixes in GROUPS.items()},
    )


@register_model("paligemma")
def build_paligemma(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """PaliGemma from `cfg.pretrained` or `cfg.config`."""
    from transformers import PaliGemmaForConditionalGeneration

    return bundle(pretrained_or_config(PaliGemmaForConditionalGeneration, cfg, tokenizer, paligemma_config))
