"""A word-level tokenizer (one token per word, ids known by hand) for pinning masks exactly."""

from __future__ import annotations

import pytest

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>", "[CLS]", "[SEP]", "[MASK]", "<|user|>", "<|assistant|>"]
WORDS = "a red green blue square circle triangle on the left right top bottom caption en what is it describe".split()
PAD, EOS, BOS, UNK, IMG, CLS, SEP, MASK, USER, ASSISTANT = range(len(SPECIALS))


def word_id(word: str) -> int:
    return len(SPECIALS) + WORDS.index(word)


def words(text: str) -> list[int]:
    return [word_id(w) for w in text.split()]


def make_word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        extra_special_tokens={"image_token": "<image>"},
    )


@pytest.fixture(scope="session")
def word_tokenizer():
    return make_word_tokenizer()


BPE_TEXTS = ["a red square on the left", "a blue circle on the right", "caption en", "what is it\nblue"] * 4


def bpe_tokenizer(kind: str, folder):
    """A small BPE with `<image>` and the pre-tokenizer `kind` (see `demo_tokenizer.PRE_TOKENIZERS`)."""
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    return build_demo_tokenizer(BPE_TEXTS, folder, vocab_size=80, pre_tokenizer=kind)
