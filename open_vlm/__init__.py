"""open_vlm: train vision-language models on WebDataset shards. `open_vlm.OpenVLM` loads one for inference."""

from __future__ import annotations

__all__ = ["OpenVLM"]


def __getattr__(name: str):
    # Lazy: `import open_vlm` stays cheap (no torch / transformers) until OpenVLM is asked for.
    if name == "OpenVLM":
        from open_vlm.inference.wrapper import OpenVLM

        return OpenVLM
    raise AttributeError(f"module 'open_vlm' has no attribute {name!r}")
