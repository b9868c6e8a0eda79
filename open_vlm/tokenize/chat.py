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
image block or the first answer would not fit, the turns before them give way instead (`ChatProcessor.fit`):
system and user contents are shortened from their ends (system turns first, then the oldest user turn, so the
question just before the answer gives way last) so that the answer's first token fits (a caption under the run's
fixed prompt) or all of it (a conversation or question from the data: the answer keeps its end); if their role
markers alone still leave no room for one answer token, whole turns are dropped in the same order. So every sample
keeps something to learn and the budget always holds. A `max_len` that the template alone exceeds (BOS, role
markers, end of turn: 22 tokens for the default template with a tokenizer that lacks `<|user|>` /
`<|assistant|>`) is refused when the processor is built.
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

Turns = list[list[tuple[list[int], str]]]  # a conversation's turns, each a list of (token ids, part) pieces


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
        self._check_budget()

    def _check_budget(self) -> None:
        """Refuse a `max_len` that leaves no room for one answer token after the template (every sample would
        train on nothing): BOS, user start, image end, end of turn and assistant start cost text tokens too."""
        t = self.template
        costs = {
            "BOS": len(self.bos),
            f"user_start {t.user_start!r}": len(self.user_start),
            f"image_end {t.image_end!r}": len(self.image_block) - self.num_image_tokens,
            "end_of_turn": len(self.end_of_turn),
            f"assistant_start {t.assistant_start!r}": len(self.assistant_start),
        }
        cost = sum(costs.values())
        if self.max_len < cost + 1:
            parts = ", ".join(f"{name} {n}" for name, n in costs.items())
            raise ValueError(
                f"data.max_text_len {self.max_len} leaves no room for an answer: the chat template costs {cost} text "
                f"tokens with this tokenizer ({parts}); set data.max_text_len to at least {cost + 1} (role markers "
                f"that are special tokens of the tokenizer cost one token each)"
            )

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

    def turns(self, messages: list[dict], image: bool = True) -> Turns:
        """The conversation as turns of (token ids, part) pieces; part is `template`, `image`, `system`, `user` or
        `answer` (supervised). Turn 0 is BOS.

        The image block goes into the first user turn holding an `<image>` marker, else the first user turn;
        `image=False` (a text-only sample) has none."""
        out: Turns = [[(self.bos, "template")]]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        marked = [i for i in users if self.image_token in messages[i]["content"]]
        image_turn = (marked or users or [None])[0] if image else None
        if image and image_turn is None:
            raise SampleError("unfit_for_task", "a chat with an image needs a user turn to hold it")
        for i, message in enumerate(messages):
            role = message["role"]
            if role == "system":
                content = self.text.ids(message["content"])
                out.append([(self.system_start, "template"), (content, "system"), (self.end_of_turn, "template")])
            elif role == "user":
                pieces = self._user_turn(message["content"], i == image_turn)
                out.append([(self.user_start, "template"), *pieces, (self.end_of_turn, "template")])
            elif role == "assistant":
                content = self.text.ids(message["content"])
                out.append([(self.assistant_start, "template"), (content + self.end_of_turn, "answer")])
            else:
                raise SampleError("bad_json", f"unknown role {role!r} (system | user | assistant)")
        return out

    def pieces(self, messages: list[dict], image: bool = True) -> list[tuple[list[int], str]]:
        """(token ids, part) in order (see `turns`)."""
        return [piece for turn in self.turns(messages, image) for piece in turn]

    def segments(self, messages: list[dict]) -> list[tuple[list[int], bool]]:
        """(token ids, supervised) pieces in order; the image block is in the first user turn."""
        return [(ids, part == "answer") for ids, part in self.pieces(messages)]

    def encode(self, messages: list[dict], image: bool = True, keep_answer: bool = False) -> dict[str, torch.Tensor]:
        """Token ids and labels of a conversation, at most `max_len` text tokens plus the image block.

        Too long, the turns before the first answer give way (`fit`) so that its first token fits (`keep_answer`:
        all of it, so the answer keeps its end); then the end is cut."""
        turns = self.turns(messages, image)
        budget = self.max_len + (self.num_image_tokens if image else 0)  # the image placeholders come on top
        if self.fit(turns, budget, keep_answer) and not self._warned:
            self._warned = True
            log.warning(
                "chat samples need more than max_len %d text tokens before their first answer: earlier turns are "
                "shortened, then dropped (system turns first, then the oldest), so that the answer fits (raise "
                "data.max_text_len to keep them whole)",
                self.max_len,
            )
        ids: list[int] = []
        labels: list[int] = []
        for piece, part in (piece for turn in turns for piece in turn):
            ids += piece
            labels += piece if part == "answer" else [IGNORE] * len(piece)
        return {
            "input_ids": torch.tensor(ids[:budget], dtype=torch.long),
            "labels": torch.tensor(labels[:budget], dtype=torch.long),
        }

    @staticmethod
    def must_fit(turns: Turns, answer_tokens: int | None) -> tuple[int, int]:
        """(tokens that must fit, index of the turn where they end): all up to the end of the image block and
        `answer_tokens` of the first answer (None: all of it)."""
        length = need = end_turn = 0
        answered = False
        for t, turn in enumerate(turns):
            for ids, part in turn:
                if part == "image":
                    need, end_turn = max(need, length + len(ids)), t
                elif part == "answer" and not answered:
                    answered = True
                    n = len(ids) if answer_tokens is None else min(answer_tokens, len(ids))
                    need, end_turn = max(need, length + n), max(end_turn, t)
                length += len(ids)
        return need, end_turn

    def fit(self, turns: Turns, budget: int, keep_answer: bool) -> bool:
        """Make the image block and the first answer fit `budget` (in place); True when something gave way.

        First the contents of the system and user turns before them are shortened from their ends (system turns
        first, then the oldest user turn), so that the whole answer fits (`keep_answer`) or its first token; then,
        if the turns' own template tokens still leave no room for that first token, whole turns are dropped in
        the same order (never BOS or the image's turn). `SampleError` when nothing more can give way."""
        need, _ = self.must_fit(turns, None if keep_answer else 1)
        changed = need > budget
        if changed:
            _shorten(turns, need - budget, need)
        while True:
            need, end_turn = self.must_fit(turns, 1)
            if need > budget:  # a dropped turn may have brought other contents before the answer
                _shorten(turns, need - budget, need)
                need, end_turn = self.must_fit(turns, 1)
            if need <= budget:
                return changed
            droppable = [t for t in _give_way_order(turns[:end_turn]) if t > 0 and not _has_image(turns[t])]
            if not droppable:
                raise SampleError("unfit_for_task", f"the chat does not fit max_len {self.max_len} text tokens")
            del turns[droppable[0]]

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


def _has_image(turn: list[tuple[list[int], str]]) -> bool:
    return any(part == "image" for _, part in turn)


def _give_way_order(turns: Turns) -> list[int]:
    """Indices of the turns in the order they give way: system turns, then the others, oldest first."""
    system = [t for t, turn in enumerate(turns) if any(part == "system" for _, part in turn)]
    return system + [t for t in range(len(turns)) if t not in system]


def _shorten(turns: Turns, excess: int, limit: int) -> None:
    """Cut up to `excess` tokens from the ends of the system and user contents that end within the first `limit`
    tokens, in `_give_way_order` (in place)."""
    position, eligible = 0, set()
    for t, turn in enumerate(turns):
        for i, (ids, part) in enumerate(turn):
            position += len(ids)
            if part in ("system", "user") and position <= limit:
                eligible.add((t, i))
    for t in _give_way_order(turns):
        for i, (ids, part) in enumerate(turns[t]):
            if (t, i) in eligible and excess > 0:
                cut = min(excess, len(ids))
                turns[t][i] = (ids[: len(ids) - cut], part)
                excess -= cut


def chat_collator(pad_id: int, padding_side: str = "right", pad_to_multiple: int = 1) -> SequenceCollator:
    """`input_ids`, `labels` (-100 on padding), 2-D `attention_mask`, stacked `pixel_values`."""
    return SequenceCollator({"input_ids": pad_id, "labels": IGNORE}, padding_side, pad_to_multiple)
