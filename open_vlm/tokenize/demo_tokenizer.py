"""A small BPE tokenizer trained offline on a list of texts, saved in HF format (used by the demo and tests)."""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


def build_demo_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 160):
    """Train a sentencepiece-style (Metaspace) BPE on `texts` and save it as a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
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
