"""What a model needs around it at inference: the training image transform, the prompt format and the tokenizer.

`InferenceProcessor` turns images (bytes, paths or PIL images) into the pixel values the model was trained on
(`data/decode.py`'s decode + resize, then normalisation) and prompts into left-padded token batches in the
model's training format (`prefix_lm`: PaliGemma's image tokens + BOS + prompt + separator; `chat_lm`: the chat
template's user turn and the assistant's start; `contrastive`: fixed-length texts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from open_vlm.data.decode import SampleError, decode_image, resize_image
from open_vlm.tokenize.padding import pad_left

ImageInput = bytes | str | Path | Image.Image
GENERATIVE_TASKS = ("prefix_lm", "chat_lm")


@dataclass
class ProcessorSettings:
    """Everything besides the tokenizer that preprocessing depends on (written to `open_vlm_export.json`)."""

    kind: str
    task: str  # prefix_lm | chat_lm | contrastive | lxmert
    image_size: int = 0
    num_image_tokens: int = 0
    prompt: str = "caption en"  # the training prompt: the default for generation
    max_text_len: int = 32
    # The trainer normalises every kind's images with 0.5 / 0.5 (`data.decode.normalize_images`).
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # Which layer `encode_image` / `encode_text` read (`model.vision_feature_layer` / `model.text_feature_layer`):
    # -1 the pooled, projected embedding; other values index `hidden_states`, mean-pooled over the tokens.
    vision_feature_layer: int = -1
    text_feature_layer: int = -1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ProcessorSettings:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def image_tensor(image: ImageInput, size: int) -> torch.Tensor:
    """One image → uint8 (size, size, 3), exactly as the training data path decodes it."""
    if isinstance(image, Image.Image):
        return resize_image(torch.from_numpy(np.array(image.convert("RGB"))), size)
    try:
        return decode_image(image_bytes(image), size)
    except SampleError as err:  # say which image
        raise ValueError(f"{'image bytes' if isinstance(image, bytes) else repr(str(image))}: {err}") from None


def image_bytes(image: bytes | str | Path) -> bytes:
    """The encoded bytes of an image given as bytes, a local path or a URL (s3://...)."""
    if isinstance(image, bytes):
        return image
    from open_vlm.storage import is_remote

    if is_remote(str(image)):
        import fsspec

        with fsspec.open(str(image), "rb") as f:
            return f.read()
    return Path(image).read_bytes()


class InferenceProcessor:
    """Images and prompts → model inputs in the training format; token ids → text."""

    def __init__(self, tokenizer, settings: ProcessorSettings):
        self.tokenizer, self.settings = tokenizer, settings
        self.text = self._text_processor()

    def _text_processor(self):
        s, tok = self.settings, self.tokenizer
        if tok is None or s.task == "lxmert":
            return None
        if s.task == "prefix_lm":
            from open_vlm.tokenize.prefix_lm import PrefixLMProcessor

            return PrefixLMProcessor(tok, s.num_image_tokens, s.max_text_len, s.prompt)
        if s.task == "chat_lm":
            from open_vlm.tokenize.chat import ChatProcessor

            return ChatProcessor(tok, s.num_image_tokens, s.max_text_len, s.prompt)
        if s.task == "contrastive":
            from open_vlm.tokenize.contrastive import ContrastiveProcessor

            return ContrastiveProcessor(tok, s.max_text_len)
        raise ValueError(f"no inference processor for task {s.task!r}")

    # --- images --------------------------------------------------------------------------------------
    def pixel_values(self, images: list[ImageInput]) -> torch.Tensor:
        """Float (B, 3, H, W) normalised with the training statistics."""
        s = self.settings
        pixels = torch.stack([image_tensor(im, s.image_size) for im in images]).float().div(255.0)
        mean, std = torch.tensor(s.image_mean), torch.tensor(s.image_std)
        return ((pixels - mean) / std).movedim(-1, -3).contiguous()

    # --- prompts -------------------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def image_token_id(self) -> int:
        return self.text.image_token_id

    def prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """(token ids, length of the bidirectional prefix) of one generation prompt."""
        if self.settings.task == "prefix_lm":
            ids = self.text.encode(prompt, None)["input_ids"].tolist()
            return ids, len(ids)
        if self.settings.task == "chat_lm":
            pieces = self.text.segments([{"role": "user", "content": prompt}])
            ids = [t for piece, _ in pieces for t in piece] + self.text.assistant_start
            return ids, 0
        raise ValueError(f"task {self.settings.task!r} does not generate text")

    def prompts(self, prompts: list[str | None]) -> dict[str, torch.Tensor]:
        """Left-padded `input_ids`, `attention_mask` and `token_type_ids` (0 on the bidirectional prefix)."""
        encoded = [self.prompt_ids(p if p is not None else self.settings.prompt) for p in prompts]
        ids = [torch.tensor(e[0], dtype=torch.long) for e in encoded]
        # token type 0 = prefix (PaliGemma: bidirectional), 1 = causal; left padding gets 0 and is masked anyway
        types = [torch.tensor([0] * n + [1] * (len(i) - n), dtype=torch.long) for i, (_, n) in zip(ids, encoded)]
        return {
            "input_ids": pad_left(ids, self.pad_id),
            "attention_mask": pad_left([torch.ones_like(i) for i in ids], 0),
            "token_type_ids": pad_left(types, 0),
        }

    def texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Fixed-length `input_ids` and `attention_mask` for a contrastive text tower."""
        pairs = [self.text.encode(t) for t in texts]
        return {"input_ids": torch.stack([p[0] for p in pairs]), "attention_mask": torch.stack([p[1] for p in pairs])}

    def decode(self, tokens: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]
