"""A small BPE tokenizer trained offline on a list of texts, saved in HF format (used by the demo and tests)."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
# How words are split before BPE: sentencepiece-style space markers (`▁`, prepended to the first word `always`,
# only at the very start `first`, or `never`, as Gemma does) or GPT-2's byte-level pieces.
PRE_TOKENIZERS = ("metaspace", "metaspace_first", "metaspace_never", "byte_level")


def build_demo_tokenizer(
    texts: list[str], out_dir: str | Path, vocab_size: int = 160, pre_tokenizer: str = "metaspace"
):
    """Train a BPE on `texts` (`pre_tokenizer` one of PRE_TOKENIZERS) and save it as a `PreTrainedTokenizerFast`.

    For `byte_level`, `vocab_size` counts on top of the 256 byte symbols."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if pre_tokenizer not in PRE_TOKENIZERS:
        raise ValueError(f"pre_tokenizer must be one of {PRE_TOKENIZERS}, got {pre_tokenizer!r}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    alphabet: list[str] = []
    if pre_tokenizer == "byte_level":
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        scheme = {"metaspace": "always", "metaspace_first": "first", "metaspace_never": "never"}[pre_tokenizer]
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme)
        tok.decoder = decoders.Metaspace(prepend_scheme=scheme)
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.save_pretrained(str(out_dir))
    return fast
