"""PaliGemma-style prefix-LM inputs: image tokens + BOS + prefix + separator | suffix + EOS.

`token_type_ids` is 0 on image + prefix (bidirectional attention) and 1 on the suffix (causal);
labels are -100 everywhere except the suffix. The encoding is `PaliGemmaProcessor`'s: the string
`BOS + prefix + separator` is tokenized as one text (a tokenizer that adds a space marker would otherwise see the
separator as a word of its own), the suffix as a text of its own followed by EOS.

What a sample trains on (caption, question → answer, prefix → suffix, a text document) is read by
`fields.prefix_lm_exchange`. A text-only sample has no image tokens and no pixels.

Truncation (`max_text_len` text tokens; image tokens come on top): for a caption under the run's fixed prompt the
suffix is cut first, down to one token, then the prefix (never below BOS + separator), as in big_vision. When the
prompt came with the sample (a question, a per-sample prompt or prefix), the prefix gives way first, so the answer
keeps its end; an answer longer than the whole budget keeps its start. A cut suffix has no EOS: it has not ended.
A text document (no prompt) is BOS (token type 0) + text + EOS (token type 1: causal), cut at its end.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from open_vlm.tokenize.fields import DOCUMENT, QA, prefix_lm_exchange
from open_vlm.tokenize.padding import IGNORE, SequenceCollator, pad_left, pad_right
from open_vlm.tokenize.text import SampleText

__all__ = ["IGNORE", "PrefixLMCollator", "PrefixLMProcessor", "pad_left", "pad_right"]


@dataclass
class PrefixLMProcessor:
    """A decoded sample (`fields.py` says which fields it reads) → token tensors (runs in loader workers)."""

    tokenizer: object  # a transformers tokenizer with bos/eos/pad and an "<image>" token
    num_image_tokens: int
    max_text_len: int = 32
    prompt: str = "caption en"
    separator: str = "\n"

    def __post_init__(self):
        tok = self.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids("<image>")
        self.bos_id, self.eos_id, self.pad_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
        if None in (self.image_token_id, self.bos_id, self.eos_id, self.pad_id):
            raise ValueError("tokenizer needs <image>, bos, eos and pad tokens")
        self.text = SampleText(tok)
        self.min_prefix = len(self.prefix_ids(""))  # BOS + separator: a prefix is never cut below it

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prefix_ids(self, prefix: str) -> list[int]:
        """BOS + prefix + separator, tokenized as one string as `PaliGemmaProcessor` does."""
        ids = self._ids(self.tokenizer.bos_token + self.text.plain(prefix) + self.separator)
        if not ids or ids[0] != self.bos_id:
            raise ValueError(f"tokenizer does not keep its BOS token {self.tokenizer.bos_token!r} as one token")
        return ids

    def encode(
        self, prefix: str | None, suffix: str | None, image: bool = True, keep_answer: bool = False
    ) -> dict[str, torch.Tensor]:
        """Token ids, token types and labels. `suffix=None` gives a generation prompt; `prefix=None` a text document
        (BOS, then the suffix as the target); `image=False` no image tokens (a text-only sample); `keep_answer`
        cuts a too long prefix before the suffix, so the answer keeps its end."""
        prefix_ids = [self.bos_id] if prefix is None else self.prefix_ids(prefix)
        suffix_ids = [] if suffix is None else [*self.text.ids(suffix), self.eos_id]
        budget = self.max_text_len
        if len(prefix_ids) + len(suffix_ids) > budget:
            floor = 1 if prefix is None else self.min_prefix  # never below BOS (+ separator)
            if keep_answer:
                prefix_ids = self._cut_prefix(prefix, prefix_ids, max(budget - len(suffix_ids), floor))
            suffix_ids = suffix_ids[: max(budget - len(prefix_ids), 1)]  # a cut answer keeps no EOS
            prefix_ids = self._cut_prefix(prefix, prefix_ids, max(budget - len(suffix_ids), floor))
        n_img = self.num_image_tokens if image else 0
        input_ids = [self.image_token_id] * n_img + prefix_ids + suffix_ids
        types = [0] * (n_img + len(prefix_ids)) + [1] * len(suffix_ids)
        labels = [IGNORE] * (n_img + len(prefix_ids)) + suffix_ids
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "token_type_ids": torch.tensor(types, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }

    def _cut_prefix(self, prefix: str | None, prefix_ids: list[int], keep: int) -> list[int]:
        """`prefix_ids` cut to at most `keep` tokens: the encoding of the prompt's longest start that fits.

        The shorter prompt is encoded as `PaliGemmaProcessor` would encode it (BOS + text + separator as one
        string), so the separator is the same token(s) as in an uncut prompt (never `▁ \\n` for `\\n`)."""
        if len(prefix_ids) <= keep or prefix is None:
            return prefix_ids
        text = self.text.plain(prefix)
        ends = [end for end in self._cut_points(text) if end < len(text)]
        # A start of k tokens costs about k + min_prefix; try one more first (the separator may join the last one).
        k = keep - self.min_prefix + 2
        for end in reversed(ends[: max(k, 0)]):  # the longest start first: usually the first or second try fits
            ids = self.prefix_ids(text[:end].rstrip())
            if len(ids) <= keep:
                return ids
        return self.prefix_ids("")

    def _cut_points(self, text: str) -> list[int]:
        """Where `text` may be cut: after each of its tokens (fast tokenizers), else after each word."""
        if getattr(self.tokenizer, "is_fast", False):
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            return sorted({end for _, end in offsets if end > 0})
        return [m.end() for m in re.finditer(r"\S+", text)]

    def __call__(self, sample: dict, source=None) -> dict:
        pair = prefix_lm_exchange(sample, self.prompt)
        prefix = None if pair.kind == DOCUMENT else pair.prompt
        has_image = "image" in sample
        out = self.encode(prefix, pair.answer, image=has_image, keep_answer=pair.kind == QA)
        if has_image:
            out["pixel_values"] = sample["image"]
        return out


@dataclass
class PrefixLMCollator:
    """Pads processed samples to the longest (rounded up to `pad_to_multiple`); right-padded for training."""

    pad_id: int
    pad_to_multiple: int = 1
    padding_side: str = "right"

    def __call__(self, samples: list[dict]) -> dict:
        pad_values = {"input_ids": self.pad_id, "token_type_ids": 0, "labels": IGNORE}
        return SequenceCollator(pad_values, self.padding_side, self.pad_to_multiple)(samples)
