"""Load tokenizers from local directories or s3:// (never from a hub)."""

from __future__ import annotations

from open_vlm.storage import local_dir


def load_tokenizer(path: str):
    """An HF tokenizer saved with `save_pretrained`, from a local directory or any fsspec URL."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(local_dir(path)), local_files_only=True)
