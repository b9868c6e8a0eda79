"""Composed-VLM chat inputs: a prompt template with N image placeholder tokens and loss only on the answers.

Layout (each piece tokenized on its own, so every mask position is known by construction):

    [BOS] user_start <image>*N image_end prompt end_of_turn  assistant_start answer end_of_turn  (more turns)

Labels are -100 everywhere except the assistants' answers and their `end_of_turn` (so the model learns to
stop). The image block sits in the first user turn; truncation cuts from the right but never inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from open_vlm.tokenize.padding import IGNORE, SequenceCollator


@dataclass
class ChatTemplate:
    """The text around turns; `end_of_turn=None` means the tokenizer's EOS token."""

    user_start: str = "<|user|>"
    assistant_start: str = "<|assistant|>"
    end_of_turn: str | None = None
    image_end: str = "\n"  # between the image block and the user's text
    add_bos: bool = True


@dataclass
class ChatProcessor:
    """Decoded `{"image", "text"[, "prompt"]}` or `{"image", "messages": [{"role", "content"}...]}` → tokens."""

    tokenizer: object
    num_image_tokens: int
    max_len: int = 64
    prompt: str = "Describe the image."
    template: ChatTemplate | None = None
    image_token: str = "<image>"

    def __post_init__(self):
        self.template = self.template or ChatTemplate()
        tok, t = self.tokenizer, self.template
        self.image_token_id = tok.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tok.unk_token_id:
            raise ValueError(f"tokenizer has no {self.image_token!r} token")
        self.bos = [tok.bos_token_id] if t.add_bos else []
        self.user_start, self.assistant_start = self._ids(t.user_start), self._ids(t.assistant_start)
        self.end_of_turn = [tok.eos_token_id] if t.end_of_turn is None else self._ids(t.end_of_turn)
        self.image_block = [self.image_token_id] * self.num_image_tokens + self._ids(t.image_end)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def segments(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
        """(token ids, supervised) pieces in order; the image block is the second piece of the first user turn."""
        pieces: list[tuple[list[int], bool]] = [(self.bos, False)]
        image_placed = False
        for message in messages:
            if message["role"] == "user":
                pieces.append((self.user_start, False))
                if not image_placed:
                    pieces.append((self.image_block, False))
                    image_placed = True
                pieces.append((self._ids(message["content"]) + self.end_of_turn, False))
            elif message["role"] == "assistant":
                pieces.append((self.assistant_start, False))
                pieces.append((self._ids(message["content"]) + self.end_of_turn, True))
            else:
                raise ValueError(f"unknown role {message['role']!r} (user | assistant)")
        if not image_placed:
            raise ValueError("a conversation needs a user turn to hold the image")
        return pieces

    def encode(self, messages: list[dict]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        image_end = 0
        for piece, supervised in self.segments(messages):
            ids += piece
            labels += piece if supervised else [IGNORE] * len(piece)
            if piece is self.image_block:
                image_end = len(ids)
        keep = max(self.max_len, image_end)  # never cut into the image block
        return {
            "input_ids": torch.tensor(ids[:keep], dtype=torch.long),
            "labels": torch.tensor(labels[:keep], dtype=torch.long),
        }

    def __call__(self, sample: dict, source=None) -> dict:
        messages = sample.get("messages") or [
            {"role": "user", "content": sample.get("prompt", self.prompt)},
            {"role": "assistant", "content": sample["text"]},
        ]
        out = self.encode(messages)
        out["pixel_values"] = sample["image"]
        return out


def chat_collator(pad_id: int, padding_side: str = "right", pad_to_multiple: int = 1) -> SequenceCollator:
    """`input_ids`, `labels` (-100 on padding), 2-D `attention_mask`, stacked `pixel_values`."""
    return SequenceCollator({"input_ids": pad_id, "labels": IGNORE}, padding_side, pad_to_multiple)
