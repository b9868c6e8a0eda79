"""Load tokenizers from local directories, s3:// or open_clip's bundled vocabularies (never from a hub)."""

from __future__ import annotations

from open_vlm.storage import local_dir

OPENCLIP_PREFIX = "openclip:"


def load_tokenizer(path: str):
    """A tokenizer by path: `openclip:<model name>` (e.g. `openclip:ViT-B-32`) or an HF `save_pretrained`
    directory, local or any fsspec URL.

    open_clip tokenizers come back as open_clip's own object: `tok(texts) -> LongTensor (N, context_length)`,
    zero-padded, with start/end-of-text tokens (see `tokenize/contrastive.py`).
    """
    if path.startswith(OPENCLIP_PREFIX):
        return load_openclip_tokenizer(path[len(OPENCLIP_PREFIX) :])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_dir(path)), local_files_only=True)


def load_openclip_tokenizer(model_name: str):
    """open_clip's tokenizer for `model_name`; only those whose vocabulary ships with open_clip work offline."""
    import open_clip

    return open_clip.get_tokenizer(model_name)


def is_openclip_tokenizer(tokenizer) -> bool:
    """open_clip tokenizers are callables with a `context_length` that return fixed-length id tensors."""
    return type(tokenizer).__module__.startswith("open_clip")
