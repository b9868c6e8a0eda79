"""Inference: `OpenVLM` (wrapper.py), decoding (generate.py), export (export.py), embeddings (embed.py)."""
