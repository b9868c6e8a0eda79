"""Sample text → token ids, never letting the text itself produce a special token.

Captions, prompts and chat turns come from the data: LLaVA-converted sets hold a literal `"<image>\\n"`, web text
may hold `<eos>` or `[MASK]`. Tokenized as is, such a string becomes the special token (an extra image
placeholder breaks the image-feature scatter; an `<eos>` ends a caption early), so processors remove special
token strings from sample text before tokenizing it. Only the processors place special tokens.
"""

from __future__ import annotations

import re


def special_token_strings(tokenizer) -> list[str]:
    """Every special token string of an HF tokenizer (named ones and added special tokens), longest first."""
    names = set(getattr(tokenizer, "all_special_tokens", None) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names |= {str(t) for t in decoder.values() if getattr(t, "special", False)}
    return sorted((n for n in names if n), key=len, reverse=True)


class SampleText:
    """Cleans and tokenizes the text of samples for one tokenizer (built once per processor)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        strings = special_token_strings(tokenizer)
        self.pattern = re.compile("|".join(re.escape(s) for s in strings)) if strings else None

    def plain(self, text: str) -> str:
        """`text` without special token strings (`"<image>\\nWhat is it?"` → `"\\nWhat is it?"`)."""
        return self.pattern.sub("", text) if self.pattern is not None else text

    def ids(self, text: str) -> list[int]:
        """Token ids of sample text: special token strings removed, no special tokens added."""
        return self.tokenizer(self.plain(text), add_special_tokens=False)["input_ids"]
