"""Autoregressive decoding with a KV cache: greedy or sampled (temperature, top-k, top-p, seed), batched with left
padding, stopping at EOS. One loop for every generative kind; a kind only says how to compute next-token logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (model, ids so far, attention mask, token types, pixel values, cache or None) → logits of the last position.
# With a cache, the function feeds only the tokens the cache has not seen; without, the whole sequence.
LogitsFn = Callable[..., torch.Tensor]
_LOGITS: dict[str, LogitsFn] = {}


@dataclass
class GenerationSettings:
    """How to pick tokens; every default in one place."""

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    seed: int | None = None  # sampling seed (a private generator: the global RNG is left alone)
    use_cache: bool = True


def register_logits(kind: str) -> Callable[[LogitsFn], LogitsFn]:
    def add(fn: LogitsFn) -> LogitsFn:
        _LOGITS[kind] = fn
        return fn

    return add


def generative_kinds() -> list[str]:
    return sorted(_LOGITS)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: the first real token is 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _seen(cache) -> int:
    return 0 if cache is None else cache.get_seq_length()


@register_logits("paligemma")
def paligemma_logits(model, ids, mask, types, pixels, cache) -> torch.Tensor:
    seen = _seen(cache)
    first = seen == 0
    out = model(
        input_ids=ids[:, seen:],
        attention_mask=mask,
        position_ids=position_ids(mask)[:, seen:] + 1,  # PaliGemma counts positions from 1
        token_type_ids=types if first else None,  # the prefix is bidirectional; later tokens are causal
        pixel_values=pixels if first else None,
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


@register_logits("vlm")
def vlm_logits(model, ids, mask, types, pixels, cache) -> torch.Tensor:
    seen = _seen(cache)
    lm = model.language_model
    embeds = model.embed(ids, pixels) if seen == 0 else lm.get_input_embeddings()(ids[:, seen:])
    out = lm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids(mask)[:, seen:],
        past_key_values=cache,
        use_cache=cache is not None,
        logits_to_keep=1,
    )
    return out.logits[:, -1]


def filter_logits(logits: torch.Tensor, settings: GenerationSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (transformers' order), as float32 scores."""
    scores = logits.float() / settings.temperature
    if settings.top_k > 0:
        k = min(settings.top_k, scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - settings.top_p
        drop[..., -1:] = False  # always keep the most likely token
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


@torch.no_grad()
def generate_tokens(
    model,
    kind: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: torch.Tensor | None,
    settings: GenerationSettings,
    eos_id: int,
    token_type_ids: torch.Tensor | None = None,
    suppress: tuple[int, ...] = (),
) -> list[list[int]]:
    """New tokens per row (EOS excluded); rows stop at EOS, the loop when every row has or at max_new_tokens."""
    from transformers import DynamicCache

    try:
        next_logits = _LOGITS[kind]
    except KeyError:
        raise ValueError(f"kind {kind!r} does not generate text (generative kinds: {generative_kinds()})") from None
    device = input_ids.device
    generator = None
    if settings.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed if settings.seed is not None else torch.seed())
    types = token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
    cache = DynamicCache() if settings.use_cache else None
    ids, mask = input_ids, attention_mask
    finished = torch.zeros(len(ids), dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    for _ in range(settings.max_new_tokens):
        logits = next_logits(model, ids, mask, types, pixel_values, cache)
        if suppress:
            logits[:, list(suppress)] = float("-inf")
        if settings.do_sample:
            probs = filter_logits(logits, settings).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = logits.argmax(-1)
        token = token.masked_fill(finished, eos_id)
        new.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        ids = torch.cat([ids, token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
        types = torch.cat([types, torch.ones_like(token)[:, None]], dim=1)
    rows = torch.stack(new, dim=1).tolist() if new else [[] for _ in range(len(ids))]
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]
