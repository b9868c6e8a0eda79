"""`lxmert`: transformers' LxmertForPreTraining (MLM + image-text matching; region features and boxes in)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import ModelBundle, Outputs, register_model
from open_vlm.models.spec import pretrained_or_config

GROUPS = {
    "embeddings": ["lxmert.embeddings."],
    "language": ["lxmert.encoder.layer."],
    "vision": ["lxmert.encoder.visn_fc.", "lxmert.encoder.r_layers."],
    "cross": ["lxmert.encoder.x_layers.", "lxmert.pooler."],
    "heads": ["cls.", "obj_predict_head.", "answer_head."],
}
INPUTS = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos", "visual_attention_mask")


def lxmert_config(spec: dict, tokenizer=None):
    """An LxmertConfig from a flat dict of its fields, the vocabulary sized to the tokenizer."""
    from transformers import LxmertConfig

    spec = dict(spec)
    if tokenizer is not None:
        spec["vocab_size"] = len(tokenizer)
    return LxmertConfig(**spec)


def lxmert_forward(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Outputs:
    """MLM logits over the text and the image-text matching score."""
    out = model(**{k: batch[k] for k in INPUTS if k in batch})
    return {"prediction_logits": out.prediction_logits, "cross_relationship_score": out.cross_relationship_score}


def bundle(model) -> ModelBundle:
    """The `ModelBundle` of an LxmertForPreTraining."""
    encoder = model.lxmert.encoder
    return ModelBundle(
        model=model,
        kind="lxmert",
        shard_units=[*encoder.layer, *encoder.r_layers, *encoder.x_layers],
        task="lxmert",
        groups={name: list(prefixes) for name, prefixes in GROUPS.items()},
        forward=lxmert_forward,
    )


@register_model("lxmert")
def build_lxmert(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """LXMERT from `cfg.pretrained` or `cfg.config`."""
    from transformers import LxmertForPreTraining

    return bundle(pretrained_or_config(LxmertForPreTraining, cfg, tokenizer, lxmert_config))
