"""`lxmert`: transformers' LxmertForPreTraining (MLM + image-text matching; region features and boxes in).

The `lxmert` loss trains MLM, image-text matching and, when the batch carries `answer_label`, the QA head. The
object-prediction head needs detector labels that region-feature shards do not carry, and the QA head needs
answers: with `task_obj_predict` / `task_qa` on, they are frozen (their weights kept, e.g. a pretrained QA head
for `eval.task vqa`) unless `model.unfreeze` names them (`qa_head`, `obj_head`). So is the visual half of the last
cross layer (`visual_output`): only the object-prediction head reads the final visual states.
"""

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
    "obj_head": ["obj_predict_head."],
    "qa_head": ["answer_head."],
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
    """MLM logits over the text, the image-text matching score and (with a QA head) the answer scores."""
    out = model(**{k: batch[k] for k in INPUTS if k in batch})
    outputs = {"prediction_logits": out.prediction_logits, "cross_relationship_score": out.cross_relationship_score}
    if getattr(model, "module", model).config.task_qa:
        outputs["question_answering_score"] = out.question_answering_score
    return outputs


def bundle(model) -> ModelBundle:
    """The `ModelBundle` of an LxmertForPreTraining."""
    encoder = model.lxmert.encoder
    last = f"lxmert.encoder.x_layers.{len(encoder.x_layers) - 1}."
    groups = {name: list(prefixes) for name, prefixes in GROUPS.items()}
    groups["visual_output"] = [f"{last}{part}." for part in ("visn_self_att", "visn_inter", "visn_output")]
    no_signal = {"visual_output": True, "obj_head": model.config.task_obj_predict, "qa_head": model.config.task_qa}
    return ModelBundle(
        model=model,
        kind="lxmert",
        shard_units=[*encoder.layer, *encoder.r_layers, *encoder.x_layers],
        task="lxmert",
        groups=groups,
        forward=lxmert_forward,
        default_freeze=[name for name, present in no_signal.items() if present],
    )


@register_model("lxmert")
def build_lxmert(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """LXMERT from `cfg.pretrained` or `cfg.config`."""
    from transformers import LxmertForPreTraining

    return bundle(pretrained_or_config(LxmertForPreTraining, cfg, tokenizer, lxmert_config))
