"""`OpenVLM`: a trained model with its processor, ready for inference, from a checkpoint, a run or an export.

model = OpenVLM.from_pretrained("runs/demo/tiny-paligemma")          # or s3://..., or an exported folder
model.generate(images=["cat.jpg"], prompts=["caption en"])           # paligemma, vlm
model.encode_image(images), model.zero_shot(images, ["cat", "dog"])  # siglip, clip
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from open_vlm.inference.generate import GenerationSettings, generate_tokens
from open_vlm.inference.processor import InferenceProcessor, ProcessorSettings

log = logging.getLogger(__name__)

EXPORT_FILE = "open_vlm_export.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CLASS_TOKENS = {"clip": 1}  # leading non-patch tokens of a vision tower's hidden states


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES.get(dtype) or getattr(torch, dtype)


def is_export(path: str) -> bool:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    return fs.exists(f"{root.rstrip('/')}/{EXPORT_FILE}")


@dataclass
class Loaded:
    """A model as loaded, before it is moved to its device: what `export` and `OpenVLM` share."""

    model: torch.nn.Module
    tokenizer: object
    settings: ProcessorSettings
    source: str  # the checkpoint URL (or the exported folder)
    step: int | None
    tokenizer_name: str | None = None  # `openclip:<model>` tokenizers are named, not saved


def load(path: str) -> Loaded:
    """The model, tokenizer and preprocessing settings of a checkpoint, a run folder or an exported folder."""
    if is_export(path):
        return load_export(path)
    from open_vlm.checkpoint.checkpointer import read_meta, resolve_checkpoint
    from open_vlm.checkpoint.model_io import load_model_from_checkpoint

    ckpt = resolve_checkpoint(path)
    bundle, tokenizer, cfg = load_model_from_checkpoint(ckpt)
    settings = ProcessorSettings(
        kind=bundle.kind,
        task=cfg.data.task or bundle.task,
        image_size=bundle.image_size,
        num_image_tokens=bundle.num_image_tokens,
        prompt=cfg.data.prompt,
        max_text_len=cfg.data.max_text_len,
        vision_feature_layer=cfg.model.vision_feature_layer,
        text_feature_layer=cfg.model.text_feature_layer,
    )
    name = cfg.model.tokenizer if cfg.model.tokenizer and cfg.model.tokenizer.startswith("openclip:") else None
    if name:
        from open_vlm.tokenize.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(name)  # not saved in the checkpoint: it ships with open_clip
    return Loaded(bundle.model, tokenizer, settings, ckpt, read_meta(ckpt).get("step"), name)


def load_export(path: str) -> Loaded:
    from open_vlm.config.schema import ModelConfig
    from open_vlm.models.registry import build_model
    from open_vlm.storage import local_dir
    from open_vlm.tokenize.tokenizers import load_tokenizer

    folder = local_dir(path)
    info = json.loads((folder / EXPORT_FILE).read_text())
    settings = ProcessorSettings.from_dict(info["processor"])
    bundle = build_model(ModelConfig(kind=settings.kind, pretrained=str(folder)))
    name = info.get("tokenizer")  # "." (saved in the folder), "openclip:<model>" or None
    tokenizer = load_tokenizer(str(folder) if name == "." else name) if name else None
    return Loaded(bundle.model, tokenizer, settings, path, info.get("step"), name if name != "." else None)


class OpenVLM:
    """A model in eval mode on its device, with the processor that feeds it the way training did."""

    def __init__(
        self, model: torch.nn.Module, processor: InferenceProcessor, source: str = "", step: int | None = None
    ):
        self.model, self.processor, self.source, self.step = model.eval(), processor, source, step

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu", dtype=None) -> OpenVLM:
        """Load a checkpoint (local or s3://), a run folder (its newest checkpoint) or an `open-vlm export` folder."""
        loaded = load(str(path))
        model = loaded.model.to(device=device, dtype=resolve_dtype(dtype))
        log.info("loaded %s (%s, step %s) on %s", loaded.source, loaded.settings.kind, loaded.step, device)
        return cls(model, InferenceProcessor(loaded.tokenizer, loaded.settings), loaded.source, loaded.step)

    @property
    def kind(self) -> str:
        return self.processor.settings.kind

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _pixels(self, images) -> torch.Tensor:
        return self.processor.pixel_values(list(images)).to(self.device, self.dtype)

    # --- generation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_ids(self, images, prompts=None, settings: GenerationSettings | None = None) -> list[list[int]]:
        """New token ids per image (EOS excluded). `prompts`: one per image, None for the training prompt."""
        images = list(images)
        prompts = list(prompts) if prompts is not None else [None] * len(images)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        batch = {k: v.to(self.device) for k, v in self.processor.prompts(prompts).items()}
        return generate_tokens(
            self.model,
            self.kind,
            batch["input_ids"],
            batch["attention_mask"],
            self._pixels(images),
            settings or GenerationSettings(),
            eos_id=self.processor.eos_id,
            token_type_ids=batch["token_type_ids"],
            suppress=(self.processor.image_token_id,),  # an image placeholder is never an answer
        )

    def generate(self, images, prompts=None, **settings) -> list[str]:
        """Answers per image; `settings` are `GenerationSettings` fields (max_new_tokens, do_sample, seed...)."""
        return self.processor.decode(self.generate_ids(images, prompts, GenerationSettings(**settings)))

    # --- contrastive ---------------------------------------------------------------------------------
    def _contrastive(self) -> None:
        if self.processor.settings.task != "contrastive":
            raise ValueError(f"{self.kind} is not a contrastive model (siglip, clip)")

    @torch.no_grad()
    def encode_image(self, images, layer: int | None = None) -> torch.Tensor:
        """L2-normalised image embeddings (N, D): the pooled embedding (layer -1) or the patches of
        `hidden_states[layer]` averaged; `layer` defaults to the model's `vision_feature_layer`."""
        self._contrastive()
        layer = self.processor.settings.vision_feature_layer if layer is None else layer
        pixels = self._pixels(images)
        if layer == -1:
            out = _pooled(self.model.get_image_features(pixel_values=pixels))
        else:
            states = self.model.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
            hidden = _layer(states, layer, "vision_feature_layer")
            out = hidden[:, CLASS_TOKENS.get(self.kind, 0) :].mean(1)  # patches only: a class token has no place
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str], layer: int | None = None) -> torch.Tensor:
        """L2-normalised text embeddings (N, D), tokenized as in training: the pooled embedding (layer -1) or
        `hidden_states[layer]` averaged over the attention mask; `layer` defaults to `text_feature_layer`."""
        self._contrastive()
        layer = self.processor.settings.text_feature_layer if layer is None else layer
        batch = {k: v.to(self.device) for k, v in self.processor.texts(list(texts)).items()}
        if layer == -1:
            out = _pooled(self.model.get_text_features(**batch))
        else:
            states = self.model.text_model(**batch, output_hidden_states=True).hidden_states
            hidden = _layer(states, layer, "text_feature_layer")
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def zero_shot_logits(self, images, class_names: list[str], template: str = "a photo of a {}") -> torch.Tensor:
        """(images, classes) logits as the model scores pairs: scale * cosine (+ bias for SigLIP)."""
        # The pooled embeddings the pair logits are trained on, whatever layer `encode_*` default to.
        image, text = self.encode_image(images, -1), self.encode_text([template.format(c) for c in class_names], -1)
        logits = image @ text.T * self.model.logit_scale.float().exp()
        bias = getattr(self.model, "logit_bias", None)
        return logits + bias.float() if bias is not None else logits

    def zero_shot(self, images, class_names: list[str], template: str = "a photo of a {}") -> torch.Tensor:
        """(images, classes) probabilities: a softmax over the classes of `zero_shot_logits`."""
        return self.zero_shot_logits(images, class_names, template).softmax(-1)


def _layer(states: tuple, layer: int, key: str) -> torch.Tensor:
    """`states[layer]`, or a ValueError naming `key` and the layers there are."""
    if not -len(states) <= layer < len(states):
        raise ValueError(f"{key} {layer}: the tower has hidden states 0..{len(states) - 1} (-1: the pooled embedding)")
    return states[layer]


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns a model output (embedding in `pooler_output`); older versions the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
