"""What each task reads from a decoded sample (the fields `data/decode.py` normalises from the shard conventions).

`prefix_lm` and `chat_lm` take the first of these a sample has (`chat_lm` takes `messages` first):

1. `prefix` + `suffix` (PaliGemma's transfer convention);
2. `answers` with `question` (or `prompt`): VQA and instructions; of several answers one is picked, seeded by the
   sample's place in the run's order (`__order__`), so a resumed run picks the same;
3. `messages` (chat turns); `prefix_lm` takes a chat of one user turn and the assistant's answer to it;
4. `text`, a caption: after the sample's own `prompt`, else (image samples) the run's `data.prompt`. A text-only
   sample without a prompt is a document: all of it is the target, as in causal LM training.

`contrastive` reads `text`; `lxmert` `text`, else `question`; `causal_lm` `text`. A sample with none of what its
task reads is a bad sample of kind `unfit_for_task` (`SampleError`), never trained on `data.prompt` alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from open_vlm.data.decode import SampleError

CAPTION, QA, DOCUMENT = "caption", "qa", "document"


def seeded_rng(seed: int, *parts: bytes | str) -> np.random.Generator:
    """A numpy RNG that depends only on `seed` and `parts` (stable across processes and Python runs)."""
    h = hashlib.sha256(str(seed).encode())
    for part in parts:
        h.update(b"\0" + (part.encode() if isinstance(part, str) else part))
    return np.random.default_rng(int.from_bytes(h.digest()[:8], "little"))


@dataclass(frozen=True)
class Exchange:
    """One prompt and its answer. `kind`: `caption` (the run's fixed prompt: the caption gives way when too long),
    `qa` (the prompt came with the sample: it gives way, so the answer keeps its end) or `document` (no prompt)."""

    prompt: str | None
    answer: str
    kind: str


def unfit(task: str, needs: str, sample: dict) -> SampleError:
    """The bad-sample error of a sample that has none of what `task` reads."""
    have = sorted(k for k in sample if not k.startswith("__") and k not in ("image", "features", "boxes"))
    return SampleError("unfit_for_task", f"task {task} reads {needs}; this sample has {', '.join(have) or 'none'}")


def choose_answer(sample: dict) -> str:
    """One of the sample's `answers`: seeded by its `__order__` (seed, source, position), else the first."""
    answers = sample["answers"]
    order = sample.get("__order__")
    if len(answers) == 1 or order is None:
        return answers[0]
    seed, source, position = order
    return answers[int(seeded_rng(seed, "answer", f"{source}:{position}").integers(len(answers)))]


def question_answer(sample: dict, task: str) -> Exchange | None:
    """The sample's own prompt → answer pair (conventions 1 and 2), or None when it has neither."""
    if sample.get("suffix"):
        return Exchange(sample.get("prefix", ""), sample["suffix"], QA)
    if sample.get("answers"):
        question = sample.get("question") or sample.get("prompt")
        if not question:
            raise unfit(task, "a question (or prompt) with each answer", sample)
        return Exchange(question, choose_answer(sample), QA)
    return None


def caption_exchange(sample: dict, default_prompt: str, task: str) -> Exchange:
    """Convention 4: a caption after the sample's prompt, the run's prompt (images), or none (a text document)."""
    if not sample.get("text"):
        raise unfit(task, "prefix/suffix, question+answer, messages or a caption (txt / json caption|text)", sample)
    if sample.get("prompt"):
        return Exchange(sample["prompt"], sample["text"], QA)
    if "image" in sample:
        return Exchange(default_prompt, sample["text"], CAPTION)
    return Exchange(None, sample["text"], DOCUMENT)


def prefix_lm_exchange(sample: dict, default_prompt: str) -> Exchange:
    """What a prefix-LM sample trains on: prefix → suffix."""
    pair = question_answer(sample, "prefix_lm")
    if pair is not None:
        return pair
    if sample.get("messages"):
        turns = [m for m in sample["messages"] if m["role"] != "system"]
        if [m["role"] for m in turns] != ["user", "assistant"]:
            raise unfit(
                "prefix_lm", "a chat of one user turn and its answer (use task chat_lm for longer ones)", sample
            )
        return Exchange(turns[0]["content"], turns[1]["content"], QA)
    return caption_exchange(sample, default_prompt, "prefix_lm")


def chat_messages(sample: dict, default_prompt: str) -> tuple[list[dict], str]:
    """What a chat sample trains on: (messages, kind); a document is one assistant turn without a user turn."""
    if sample.get("messages"):
        return sample["messages"], QA
    pair = question_answer(sample, "chat_lm") or caption_exchange(sample, default_prompt, "chat_lm")
    if pair.kind == DOCUMENT:
        return [{"role": "assistant", "content": pair.answer}], DOCUMENT
    return [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.answer}], pair.kind


def caption(sample: dict, task: str) -> str:
    """The caption (`text`) that contrastive and causal-LM samples are made of."""
    if not sample.get("text"):
        raise unfit(task, "a caption / text (txt or json caption|text)", sample)
    return sample["text"]
