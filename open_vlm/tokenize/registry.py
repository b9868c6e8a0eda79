"""Task name → (processor, collator). Processors run in loader workers on one decoded sample; collators batch.

    processor, collate = build_processor("chat_lm", tokenizer, num_image_tokens=16, max_len=64)

Every collator returns a dict with `num_tokens` (real, non-pad tokens), `num_supervised` (tokens the loss
sees, after the next-token shift for causal tasks) and `__meta__` (passed through from the loader).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from open_vlm.names import lookup
from open_vlm.tokenize.causal import CausalLMProcessor, PackedCausalLMCollator, causal_lm_collator
from open_vlm.tokenize.chat import ChatProcessor, ChatTemplate, chat_collator
from open_vlm.tokenize.contrastive import ContrastiveCollator, ContrastiveProcessor
from open_vlm.tokenize.lxmert import LxmertCollator, LxmertProcessor
from open_vlm.tokenize.prefix_lm import PrefixLMCollator, PrefixLMProcessor
from open_vlm.tokenize.pretokenized import PretokenizedProcessor, RouteByModality

Pair = tuple[Callable, Callable]
_TASKS: dict[str, Callable[..., Pair]] = {}


def register_task(name: str) -> Callable:
    def add(fn: Callable[..., Pair]) -> Callable[..., Pair]:
        _TASKS[name] = fn
        return fn

    return add


def task_names() -> list[str]:
    return sorted(_TASKS)


def task_options(task: str, **available) -> dict:
    """The subset of `available` values that `task` accepts (lets the trainer offer everything it knows)."""
    accepted = set(inspect.signature(_TASKS[task]).parameters) - {"tokenizer"}
    return {k: v for k, v in available.items() if k in accepted}


def build_processor(task: str, tokenizer, *, pretokenized: bool = False, **options) -> Pair:
    """The processor and collator of `task`. `options` are the task's knobs (see the factories below).

    The processor tokenizes decoded samples, except those of sources with modality `pretokenized` (written by
    `tools/tokenize_shards.py`), which it reads back as stored: same collator, same batches.
    `pretokenized=True` returns the reading processor alone (every source pre-tokenized, no tokenizer used)."""
    factory = lookup(_TASKS, task, "task")
    accepted = [p for p in inspect.signature(factory).parameters if p != "tokenizer"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"task {task!r} has no option(s) {unknown}; it accepts {accepted}")
    processor, collator = factory(tokenizer, **options)
    return (PretokenizedProcessor() if pretokenized else RouteByModality(processor)), collator


@register_task("prefix_lm")
def _prefix_lm(
    tokenizer,
    num_image_tokens: int,
    max_len: int = 32,
    prompt: str = "caption en",
    pad_to_multiple: int = 1,
    padding_side: str = "right",
) -> Pair:
    processor = PrefixLMProcessor(tokenizer, num_image_tokens, max_len, prompt)
    return processor, PrefixLMCollator(tokenizer.pad_token_id, pad_to_multiple, padding_side)


@register_task("chat_lm")
def _chat_lm(
    tokenizer,
    num_image_tokens: int,
    max_len: int = 64,
    prompt: str = "Describe the image.",
    template: ChatTemplate | None = None,
    pad_to_multiple: int = 1,
    padding_side: str = "right",
) -> Pair:
    processor = ChatProcessor(tokenizer, num_image_tokens, max_len, prompt, template)
    return processor, chat_collator(tokenizer.pad_token_id, padding_side, pad_to_multiple)


@register_task("causal_lm")
def _causal_lm(
    tokenizer,
    max_len: int = 512,
    pack: bool = False,
    packed_mask: str = "4d_bool",
    pad_to_multiple: int = 1,
    padding_side: str = "right",
    add_bos: bool = True,
    add_eos: bool = True,
) -> Pair:
    processor = CausalLMProcessor(tokenizer, max_len, add_bos, add_eos)
    if pack:
        if padding_side != "right":
            raise ValueError("packed rows are right-padded")
        return processor, PackedCausalLMCollator(tokenizer.pad_token_id, max_len, packed_mask, pad_to_multiple)
    return processor, causal_lm_collator(tokenizer.pad_token_id, padding_side, pad_to_multiple)


@register_task("contrastive")
def _contrastive(tokenizer, max_len: int | None = None) -> Pair:
    return ContrastiveProcessor(tokenizer, max_len), ContrastiveCollator()


@register_task("lxmert")
def _lxmert(
    tokenizer,
    num_regions: int = 36,
    max_len: int = 20,
    seed: int = 0,
    mlm_prob: float = 0.15,
    negative_prob: float = 0.5,
    pad_to_multiple: int = 1,
) -> Pair:
    processor = LxmertProcessor(tokenizer, num_regions, max_len, seed, mlm_prob)
    return processor, LxmertCollator(tokenizer.pad_token_id, seed, negative_prob, pad_to_multiple)
