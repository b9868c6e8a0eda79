"""Composed-VLM chat inputs: a prompt template with N image placeholder tokens and loss only on the answers.

Layout (each piece tokenized on its own, so every mask position is known by construction):

    [BOS] [system_start system end_of_turn] user_start <image>*N image_end prompt end_of_turn
          assistant_start answer end_of_turn  (more turns)

Labels are -100 everywhere except the assistants' answers and their `end_of_turn` (so the model learns to
stop). The image block sits in the first user turn.

Truncation: `max_len` counts text tokens; the N image placeholders come on top (as `data.max_text_len` says).
The sequence is cut from the right (later turns, then the answer's end), never inside the image block. When even
the first answer's first token would not fit, the user turn before it is shortened instead, so every sample
keeps something to learn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from open_vlm.tokenize.padding import IGNORE, SequenceCollator
from open_vlm.tokenize.text import SampleText

log = logging.getLogger(__name__)


@dataclass
class ChatTemplate:
    """The text around turns; `end_of_turn=None` means the tokenizer's EOS token."""

    user_start: str = "<|user|>"
    assistant_start: str = "<|assistant|>"
    system_start: str = "<|system|>"
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
        self.text = SampleText(tok)
        self.bos = [tok.bos_token_id] if t.add_bos else []
        self.user_start, self.assistant_start = self._ids(t.user_start), self._ids(t.assistant_start)
        self.system_start = self._ids(t.system_start)
        self.end_of_turn = [tok.eos_token_id] if t.end_of_turn is None else self._ids(t.end_of_turn)
        self.image_block = [self.image_token_id] * self.num_image_tokens + self._ids(t.image_end)
        self._warned = False

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def pieces(self, messages: list[dict]) -> list[tuple[list[int], str]]:
        """(token ids, part) in order; part is `template`, `image`, `system`, `user` or `answer` (supervised)."""
        out: list[tuple[list[int], str]] = [(self.bos, "template")]
        image_placed = False
        for message in messages:
            role, content = message["role"], self.text.ids(message["content"])
            if role == "system":
                out += [(self.system_start, "template"), (content, "system"), (self.end_of_turn, "template")]
            elif role == "user":
                out.append((self.user_start, "template"))
                if not image_placed:
                    out.append((self.image_block, "image"))
                    image_placed = True
                out += [(content, "user"), (self.end_of_turn, "template")]
            elif role == "assistant":
                out += [(self.assistant_start, "template"), (content + self.end_of_turn, "answer")]
            else:
                raise ValueError(f"unknown role {role!r} (system | user | assistant)")
        if not image_placed:
            raise ValueError("a conversation needs a user turn to hold the image")
        return out

    def segments(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
        """(token ids, supervised) pieces in order; the image block is in the first user turn."""
        return [(ids, part == "answer") for ids, part in self.pieces(messages)]

    def encode(self, messages: list[dict]) -> dict[str, torch.Tensor]:
        pieces = self.pieces(messages)
        budget = self.max_len + self.num_image_tokens  # max_len counts text; the image placeholders come on top
        parts = [part for _, part in pieces]
        first_answer = parts.index("answer") if "answer" in parts else None
        if first_answer is not None:
            before = sum(len(ids) for ids, _ in pieces[:first_answer])
            excess = before + 1 - budget  # tokens to drop before the first answer so one of its tokens fits
            users = [i for i in range(first_answer) if parts[i] == "user"]
            if excess > 0 and users:
                i = users[-1]
                ids, part = pieces[i]
                pieces[i] = (ids[: max(len(ids) - excess, 0)], part)
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "chat samples need %d text tokens before their first answer, more than max_len %d: the "
                        "user turn is shortened (raise data.max_text_len to keep it whole)",
                        before - self.num_image_tokens,
                        self.max_len,
                    )
        ids: list[int] = []
        labels: list[int] = []
        image_end = 0
        for piece, part in pieces:
            ids += piece
            labels += piece if part == "answer" else [IGNORE] * len(piece)
            if part == "image":
                image_end = len(ids)
        keep = max(budget, image_end)  # never cut into the image block
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
