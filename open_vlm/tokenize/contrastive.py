"""Contrastive (CLIP / SigLIP) inputs: an image and fixed-length caption tokens in the tokenizer's own convention.

- open_clip tokenizers: `<start> text <end>` zero-padded to `context_length`; a long text is cut and its last
  token replaced by `<end>` (open_clip's rule). The real tokens run up to and including `<end>`.
- HF tokenizers (SigLIP style): the tokenizer's special tokens, `padding="max_length"` on its own padding
  side with its pad token, truncation to `max_len`; the mask is the tokenizer's attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from open_vlm.tokenize.fields import caption
from open_vlm.tokenize.padding import valid_rows
from open_vlm.tokenize.text import SampleText
from open_vlm.tokenize.tokenizers import is_openclip_tokenizer


@dataclass
class ContrastiveProcessor:
    """Decoded `{"image", "text"}` → `pixel_values`, `input_ids` (max_len,), `attention_mask` (max_len,)."""

    tokenizer: object
    max_len: int | None = None  # default: the open_clip tokenizer's context length, else 64

    def __post_init__(self):
        self.openclip = is_openclip_tokenizer(self.tokenizer)
        if self.max_len is None:
            self.max_len = self.tokenizer.context_length if self.openclip else 64
        self.text = None if self.openclip else SampleText(self.tokenizer)

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.openclip:
            ids = self.tokenizer([text], context_length=self.max_len)[0].long()
            real = int((ids == self.tokenizer.eot_token_id).nonzero()[0]) + 1
            mask = (torch.arange(self.max_len) < real).long()
            return ids, mask
        enc = self.tokenizer(self.text.plain(text), padding="max_length", truncation=True, max_length=self.max_len)
        return torch.tensor(enc["input_ids"], dtype=torch.long), torch.tensor(enc["attention_mask"], dtype=torch.long)

    def __call__(self, sample: dict, source=None) -> dict:
        ids, mask = self.encode(caption(sample, "contrastive"))
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": sample["image"]}


class ContrastiveCollator:
    """Stacks the fixed-length samples. No token is a target: `num_supervised` is 0; `num_pairs` counts valid pairs.

    `valid` (B,) marks the rows the contrastive losses use, as rows and as columns (negatives)."""

    def __call__(self, samples: list[dict]) -> dict:
        batch = {k: torch.stack([s[k] for s in samples]) for k in ("input_ids", "attention_mask", "pixel_values")}
        valid = valid_rows(samples)
        batch["valid"] = valid
        batch["num_tokens"] = int(batch["attention_mask"][valid].sum())
        batch["num_supervised"] = 0
        batch["num_pairs"] = int(valid.sum())
        batch["__meta__"] = [s.get("__meta__") for s in samples]
        return batch
