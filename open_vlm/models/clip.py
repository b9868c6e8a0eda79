"""`clip`: transformers' CLIPModel (contrastive image + text towers, softmax logits, no bias).

transformers keeps `logit_scale` as a 0-D parameter, which FSDP2's `fully_shard` refuses; the bundle's model holds
it with shape (1,) (the same math by broadcasting) and export writes it back as 0-D (`stock_state_dict`).
Checkpoints that hold it 0-D (written before) still load and resume (`checkpoint/dcp_io.py`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import ModelBundle, register_model
from open_vlm.models.siglip import MAX_LOGIT_SCALE, contrastive_forward
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
    shardable_logit_scale(model)
    return ModelBundle(
        model=model,
        kind="clip",
        image_size=model.config.vision_config.image_size,
        shard_units=[model.vision_model, *model.text_model.encoder.layers],
        task="contrastive",
        groups={name: list(prefixes) for name, prefixes in GROUPS.items()},
        forward=contrastive_forward,  # no logit_bias: the clip loss takes none
    )


def shardable_logit_scale(model: nn.Module) -> None:
    """Hold `logit_scale` with shape (1,) so FSDP2 can shard it (a 0-D parameter is refused)."""
    if model.logit_scale.dim() == 0:
        model.logit_scale = nn.Parameter(model.logit_scale.detach().reshape(1), model.logit_scale.requires_grad)


def stock_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as transformers' CLIPModel has it: a 0-D `logit_scale` (clamped as training used it)."""
    state = dict(model.state_dict())
    state["logit_scale"] = state["logit_scale"].reshape(()).clamp(0.0, MAX_LOGIT_SCALE)
    return state
