"""Composed-VLM chat inputs: a prompt template with N image placeholder tokens and loss only on the answers.

Layout (each piece tokenized on its own, so every mask position is known by construction):

    [BOS] [system_start system end_of_turn] user_start <image>*N image_end prompt end_of_turn
          assistant_start answer end_of_turn  (more turns)

Labels are -100 everywhere except the assistants' answers and their `end_of_turn` (so the model learns to
stop). The image block sits in the first user turn whose text holds an `<image>` marker, where the marker is
(LLaVA's `"<image>\nWhat is..."` puts it first), else at the start of the first user turn. A text-only sample has
no image block; a text-only sample without turns (a caption-less document) is BOS + text + EOS, all of it the
target. Which fields a sample's conversation comes from is `fields.chat_messages`' business.

Truncation: `max_len` counts text tokens; the N image placeholders come on top (as `data.max_text_len` says).
The sequence is cut from the right (later turns, then the answer's end), never inside the image block. When the
first answer would not fit, the user turns before it are shortened instead: so that its first token fits (a
caption under the run's fixed prompt), or all of it (a conversation or question from the data: the answer keeps
its end), so every sample keeps something to learn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from open_vlm.data.decode import SampleError
from open_vlm.tokenize.fields import DOCUMENT, QA, chat_messages
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
    """A decoded sample (`fields.chat_messages`: messages, question/answer, prefix/suffix, caption) → tokens."""

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

    def _user_turn(self, content: str, with_image: bool) -> list[tuple[list[int], str]]:
        """A user turn's content pieces; the image block goes where its `<image>` marker is, else first."""
        if not with_image:
            return [(self.text.ids(content), "user")]
        before, _, after = content.partition(self.image_token) if self.image_token in content else ("", "", content)
        return [
            (self.text.ids(before.rstrip()), "user"),
            (self.image_block, "image"),
            (self.text.ids(after.lstrip()), "user"),
        ]

    def pieces(self, messages: list[dict], image: bool = True) -> list[tuple[list[int], str]]:
        """(token ids, part) in order; part is `template`, `image`, `system`, `user` or `answer` (supervised).

        The image block goes into the first user turn holding an `<image>` marker, else the first user turn;
        `image=False` (a text-only sample) has none."""
        out: list[tuple[list[int], str]] = [(self.bos, "template")]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        marked = [i for i in users if self.image_token in messages[i]["content"]]
        image_turn = (marked or users or [None])[0] if image else None
        if image and image_turn is None:
            raise SampleError("unfit_for_task", "a chat with an image needs a user turn to hold it")
        for i, message in enumerate(messages):
            role = message["role"]
            if role == "system":
                content = self.text.ids(message["content"])
                out += [(self.system_start, "template"), (content, "system"), (self.end_of_turn, "template")]
            elif role == "user":
                out.append((self.user_start, "template"))
                out += self._user_turn(message["content"], i == image_turn)
                out.append((self.end_of_turn, "template"))
            elif role == "assistant":
                content = self.text.ids(message["content"])
                out += [(self.assistant_start, "template"), (content + self.end_of_turn, "answer")]
            else:
                raise SampleError("bad_json", f"unknown role {role!r} (system | user | assistant)")
        return out

    def segments(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
        """(token ids, supervised) pieces in order; the image block is in the first user turn."""
        return [(ids, part == "answer") for ids, part in self.pieces(messages)]

    def encode(self, messages: list[dict], image: bool = True, keep_answer: bool = False) -> dict[str, torch.Tensor]:
        """Token ids and labels of a conversation. Too long, the user turns before the first answer give way so
        that one token of it fits (`keep_answer`: all of it, so the answer keeps its end); then the end is cut."""
        pieces = self.pieces(messages, image)
        n_img = self.num_image_tokens if image else 0
        budget = self.max_len + n_img  # max_len counts text; the image placeholders come on top
        parts = [part for _, part in pieces]
        first_answer = parts.index("answer") if "answer" in parts else None
        if first_answer is not None:
            before = sum(len(ids) for ids, _ in pieces[:first_answer])
            excess = before + (len(pieces[first_answer][0]) if keep_answer else 1) - budget
            if excess > 0 and "user" in parts[:first_answer]:
                self._shorten_users(pieces, first_answer, excess)
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "chat samples need %d text tokens before their answer, more than max_len %d: the user "
                        "turn is shortened (raise data.max_text_len to keep it whole)",
                        before - n_img,
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

    @staticmethod
    def _shorten_users(pieces: list[tuple[list[int], str]], first_answer: int, excess: int) -> None:
        """Drop `excess` tokens from the ends of the user pieces before the first answer, the latest first."""
        for i in reversed(range(first_answer)):
            ids, part = pieces[i]
            if part != "user" or excess <= 0:
                continue
            cut = min(excess, len(ids))
            pieces[i] = (ids[: len(ids) - cut], part)
            excess -= cut

    def encode_document(self, text: str) -> dict[str, torch.Tensor]:
        """A text-only document: BOS + text + EOS, all of it the target (as causal LM training), cut at its end."""
        ids = (self.bos + self.text.ids(text) + [self.tokenizer.eos_token_id])[: max(self.max_len, len(self.bos) + 1)]
        labels = [IGNORE] * len(self.bos) + ids[len(self.bos) :]
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def __call__(self, sample: dict, source=None) -> dict:
        messages, kind = chat_messages(sample, self.prompt)
        has_image = "image" in sample
        if kind == DOCUMENT:
            out = self.encode_document(messages[0]["content"])
        else:
            out = self.encode(messages, image=has_image, keep_answer=kind == QA)
        if has_image:
            out["pixel_values"] = sample["image"]
        return out


def chat_collator(pad_id: int, padding_side: str = "right", pad_to_multiple: int = 1) -> SequenceCollator:
    """`input_ids`, `labels` (-100 on padding), 2-D `attention_mask`, stacked `pixel_values`."""
    return SequenceCollator({"input_ids": pad_id, "labels": IGNORE}, padding_side, pad_to_multiple)
