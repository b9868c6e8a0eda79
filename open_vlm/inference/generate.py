"""Greedy / sampled generation from a checkpoint, with the training image transform and prompt format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from open_vlm.data.decode import decode_image, normalize_images
from open_vlm.tokenize.prefix_lm import PrefixLMProcessor, pad_left


@dataclass
class Generator:
    model: torch.nn.Module
    processor: PrefixLMProcessor
    image_size: int

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu") -> Generator:
        """Load a checkpoint, a checkpoint directory or a run folder (local or s3://)."""
        from open_vlm.checkpoint.model_io import load_model_from_checkpoint

        bundle, tokenizer, cfg = load_model_from_checkpoint(path)
        if bundle.kind != "paligemma":
            raise NotImplementedError(f"generate supports paligemma checkpoints today, not {bundle.kind}")
        processor = PrefixLMProcessor(tokenizer, bundle.num_image_tokens, cfg.data.max_text_len, cfg.data.prompt)
        return cls(bundle.model.to(device).eval(), processor, bundle.image_size)

    @torch.no_grad()
    def generate(
        self,
        images: list[bytes | str | Path],
        prompts: list[str] | None = None,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
    ) -> list[str]:
        """Answers for a batch of images (bytes or paths) and prompts (default: the training prompt)."""
        prompts = prompts or [self.processor.prompt] * len(images)
        pixels = torch.stack(
            [decode_image(Path(im).read_bytes() if not isinstance(im, bytes) else im, self.image_size) for im in images]
        )
        encoded = [self.processor.encode(p, None) for p in prompts]
        pad = self.processor.pad_id
        input_ids = pad_left([e["input_ids"] for e in encoded], pad)
        attention_mask = pad_left([torch.ones_like(e["input_ids"]) for e in encoded], 0)
        device = next(self.model.parameters()).device
        out = self.model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            token_type_ids=torch.zeros_like(input_ids).to(device),
            pixel_values=normalize_images(pixels).to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=top_k if do_sample else None,
            eos_token_id=self.processor.eos_id,
            pad_token_id=pad,
        )
        new = out[:, input_ids.shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
