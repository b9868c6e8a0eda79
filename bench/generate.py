#!/usr/bin/env python
"""Tokens/s of cached vs uncached generation on a tiny randomly initialised model, measured in one run.

    python bench/generate.py [--kind paligemma|vlm] [--batch 4] [--new-tokens 64] [--repeats 3]

Builds the model from `configs/models/<kind>_tiny.yaml` with a small local tokenizer (no downloads), forces
full-length generation (EOS is never picked), and prints tokens/s both ways and their ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build(kind: str, tmp: str):
    from open_vlm.config.schema import ModelConfig
    from open_vlm.inference.processor import InferenceProcessor, ProcessorSettings
    from open_vlm.inference.wrapper import OpenVLM
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    texts = ["a red square on the left", "a blue circle on the right", "caption en"] * 4
    tokenizer = build_demo_tokenizer(texts, tmp, vocab_size=60)
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind=kind, config=str(REPO / f"configs/models/{kind}_tiny.yaml")), tokenizer)
    task = "prefix_lm" if kind == "paligemma" else "chat_lm"
    settings = ProcessorSettings(kind, task, bundle.image_size, bundle.num_image_tokens, max_text_len=32)
    return OpenVLM(bundle.model, InferenceProcessor(tokenizer, settings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="paligemma", choices=["paligemma", "vlm"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from PIL import Image

    from open_vlm.inference.generate import GenerationSettings

    with tempfile.TemporaryDirectory() as tmp:
        model = build(args.kind, tmp)
    model.model.to(args.device)
    head = model.model.get_output_embeddings() if args.kind == "paligemma" else model.model.language_model.lm_head
    eos = model.processor.eos_id
    head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([eos], device=out.device), -1e4))
    size = model.processor.settings.image_size
    images = [Image.new("RGB", (size, size), (40 * i, 90, 200)) for i in range(args.batch)]
    rate = {}
    for use_cache in (True, False):
        settings = GenerationSettings(max_new_tokens=args.new_tokens, use_cache=use_cache)
        model.generate_ids(images, None, GenerationSettings(max_new_tokens=2, use_cache=use_cache))  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            rows = model.generate_ids(images, None, settings)
            best = min(best, time.perf_counter() - start)
        tokens = sum(len(r) for r in rows)
        rate[use_cache] = tokens / best
        print(f"{args.kind} use_cache={use_cache}: {tokens} tokens in {best:.3f}s = {rate[use_cache]:.0f} tokens/s")
    print(f"cached / uncached: {rate[True] / rate[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
