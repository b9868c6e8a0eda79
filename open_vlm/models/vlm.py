"""`vlm`: a SigLIP vision tower + projector + any causal LM, image features scattered into placeholder tokens.

Saved folder: `vlm_config.json`, `vision_tower.safetensors`, `projector.safetensors` and `language_model/`
(the LM's own save_pretrained: `AutoModelForCausalLM.from_pretrained(folder/"language_model")` loads it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from open_vlm.config.schema import ModelConfig
from open_vlm.models.projector import Projector
from open_vlm.models.registry import ModelBundle, register_model
from open_vlm.models.siglip import vision_features
from open_vlm.models.spec import decoder_layers, module_name, read_model_config
from open_vlm.models.text_only import needs_vision_tie, zero_weight_vision
from open_vlm.storage import local_dir

log = logging.getLogger(__name__)

CONFIG_FILE = "vlm_config.json"


def check_image_tokens(mask: torch.Tensor, batch: int, per_image: int) -> None:
    """Image placeholder tokens must match the features one to one; checked without a host sync off the CPU."""
    count = mask.sum()
    if count.device.type == "cpu":  # reading a CPU tensor costs no device synchronisation
        if int(count) != batch * per_image:
            raise ValueError(f"{int(count)} image tokens in input_ids for {batch}x{per_image} features")
        return
    # On an accelerator `int(count)` would stall the host until the queued kernels ran; the device checks it.
    torch._assert_async(count == batch * per_image, f"image tokens in input_ids != {batch}x{per_image} features")


class VisionLanguageModel(nn.Module):
    """Vision tower → projector → language model, the image features replacing `image_token_id` embeddings."""

    def __init__(
        self,
        vision_tower: nn.Module,
        language_model: nn.Module,
        projector: str = "mlp",
        pixel_shuffle: int = 1,
        image_token_id: int = 0,
        vision_feature_layer: int = -1,
    ):
        super().__init__()
        self.vision_tower = vision_tower  # a SiglipVisionModel without its pooling head
        self.language_model = language_model
        self.projector = Projector(
            projector, vision_tower.config.hidden_size, language_model.config.hidden_size, pixel_shuffle
        )
        self.settings = {
            "projector": projector,
            "pixel_shuffle": pixel_shuffle,
            "image_token_id": image_token_id,
            "vision_feature_layer": vision_feature_layer,
        }

    @property
    def image_token_id(self) -> int:
        return self.settings["image_token_id"]

    @property
    def num_image_tokens(self) -> int:
        vision = self.vision_tower.config
        return (vision.image_size // vision.patch_size) ** 2 // self.settings["pixel_shuffle"] ** 2

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, num_image_tokens, LM width) projected image features."""
        tower_dtype = self.vision_tower.embeddings.patch_embedding.weight.dtype
        feats = vision_features(self.vision_tower, pixel_values.to(tower_dtype), self.settings["vision_feature_layer"])
        return self.projector(feats.to(next(self.projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image features written, in order, over the image placeholder tokens."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        feats = self.image_features(pixel_values)
        mask = input_ids == self.image_token_id
        check_image_tokens(mask, feats.shape[0], feats.shape[1])
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, token_type_ids=None, **kwargs):
        """The language model's output (logits, and its loss when `labels` is given)."""
        del token_type_ids  # prefix-LM batches carry it; a causal LM has no use for it
        embeds = self.embed(input_ids, pixel_values)
        # A text-only training batch still runs the vision side at weight zero (models/text_only.py: DDP).
        if needs_vision_tie(self, [self.vision_tower, self.projector], {"pixel_values": pixel_values, **kwargs}):
            tie = zero_weight_vision(self.image_features, self.vision_tower.config.image_size, embeds)
            embeds = embeds + tie.to(embeds.dtype)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, attention_mask=None, **kwargs):
        """Continue `input_ids` (new tokens only, as transformers does for `inputs_embeds`)."""
        embeds = self.embed(input_ids, pixel_values)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def save_pretrained(self, folder: str | Path, **kwargs) -> None:
        """Write the folder described in the module docstring (kwargs go to the LM's save_pretrained)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"vision_config": self.vision_tower.config.to_dict(), **self.settings}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_file(tensors(self.vision_tower), str(folder / "vision_tower.safetensors"))
        save_file(tensors(self.projector), str(folder / "projector.safetensors"))
        self.language_model.save_pretrained(str(folder / "language_model"), **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> VisionLanguageModel:
        """Load a saved folder, local or remote (kwargs go to the LM's from_pretrained)."""
        from transformers import AutoModelForCausalLM, SiglipVisionConfig

        folder = local_dir(str(folder))
        config = json.loads((folder / CONFIG_FILE).read_text())
        tower = vision_tower_from_config(SiglipVisionConfig.from_dict(config.pop("vision_config")))
        tower.load_state_dict(load_file(str(folder / "vision_tower.safetensors")), strict=True)
        kwargs.setdefault("local_files_only", True)
        lm = AutoModelForCausalLM.from_pretrained(str(folder / "language_model"), **kwargs)
        model = cls(tower, lm, **config)
        model.projector.load_state_dict(load_file(str(folder / "projector.safetensors")), strict=True)
        return model


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def vision_tower_from_config(config) -> nn.Module:
    """A randomly initialised SiglipVisionModel without the pooling head."""
    from transformers import SiglipVisionModel

    config.vision_use_head = False
    return SiglipVisionModel(config)


def pretrained_vision_tower(url: str) -> nn.Module:
    """The vision half of a saved SiglipModel / SiglipVisionModel, without the pooling head."""
    from transformers import SiglipVisionModel

    path = str(local_dir(url))
    return SiglipVisionModel.from_pretrained(path, vision_use_head=False, local_files_only=True)


def language_model(spec: dict, tokenizer) -> nn.Module:
    """A causal LM from `spec["text_pretrained"]` or the config fields in `spec["text"]` (incl. model_type)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if spec.get("text_pretrained"):
        lm = AutoModelForCausalLM.from_pretrained(str(local_dir(spec["text_pretrained"])), local_files_only=True)
        if tokenizer is not None and len(tokenizer) != lm.config.vocab_size:
            lm.resize_token_embeddings(len(tokenizer))
        return lm
    text = dict(spec["text"])
    if tokenizer is not None:
        text["vocab_size"] = len(tokenizer)
        text.setdefault("pad_token_id", tokenizer.pad_token_id)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(text.pop("model_type"), **text))


def vlm_from_spec(spec: dict, tokenizer, vision_feature_layer: int = -1) -> VisionLanguageModel:
    """A VisionLanguageModel from a config file's dict: `vision`/`vision_pretrained`, `text`/`text_pretrained`."""
    from transformers import SiglipVisionConfig

    if spec.get("vision_pretrained"):
        tower = pretrained_vision_tower(spec["vision_pretrained"])
    else:
        tower = vision_tower_from_config(SiglipVisionConfig(**spec["vision"]))
    if tokenizer is not None and "<image>" in tokenizer.get_vocab():
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    else:
        image_token_id = spec["image_token_id"]
    return VisionLanguageModel(
        tower,
        language_model(spec, tokenizer),
        projector=spec.get("projector", "mlp"),
        pixel_shuffle=spec.get("pixel_shuffle", 1),
        image_token_id=image_token_id,
        vision_feature_layer=vision_feature_layer,
    )


def bundle(model: VisionLanguageModel) -> ModelBundle:
    """The `ModelBundle` of a VisionLanguageModel."""
    lm = model.language_model
    embeddings = module_name(model, lm.get_input_embeddings())
    head = lm.get_output_embeddings()
    groups = {
        "vision": ["vision_tower."],
        "projector": ["projector."],
        "language": ["language_model."],
        "embeddings": [f"{embeddings}."],
    }
    if head is not None:
        groups["lm_head"] = [f"{module_name(model, head)}."]
    return ModelBundle(
        model=model,
        kind="vlm",
        image_size=model.vision_tower.config.image_size,
        num_image_tokens=model.num_image_tokens,
        shard_units=[model.vision_tower, *decoder_layers(lm)],
        task="chat_lm",
        groups=groups,
    )


@register_model("vlm")
def build_vlm(cfg: ModelConfig, tokenizer) -> ModelBundle:
    """A composed VLM from `cfg.pretrained` (a folder written by save_pretrained) or `cfg.config`."""
    if cfg.pretrained:
        model = VisionLanguageModel.from_pretrained(cfg.pretrained)
        saved = model.settings["vision_feature_layer"]
        if cfg.vision_feature_layer not in (-1, saved):
            log.warning(
                "model.vision_feature_layer %d ignored: the saved model uses %d", cfg.vision_feature_layer, saved
            )
    elif cfg.config:
        model = vlm_from_spec(read_model_config(cfg.config), tokenizer, cfg.vision_feature_layer)
    else:
        raise ValueError("model.kind vlm needs model.pretrained or model.config")
    return bundle(model)
