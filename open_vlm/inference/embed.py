"""`open-vlm embed`: L2-normalised image or text embeddings of a contrastive model (siglip, clip) to stdout or .npy."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from open_vlm.config.validate import check_model_inputs


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="open-vlm embed", description="Embed images or texts (siglip, clip).")
    parser.add_argument("--checkpoint", required=True, help="checkpoint, run folder or exported folder (or s3://)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", nargs="+", help="image file(s)")
    what.add_argument("--text", nargs="+", help="text(s)")
    parser.add_argument("--out", default=None, help="write a (N, D) float32 .npy here instead of printing")
    layer = "-1: the pooled embedding; other: hidden_states[N] mean-pooled (default: the model's %s)"
    parser.add_argument("--vision-feature-layer", type=int, default=None, help=layer % "model.vision_feature_layer")
    parser.add_argument("--text-feature-layer", type=int, default=None, help=layer % "model.text_feature_layer")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    check_model_inputs(args.checkpoint, args.image)
    from open_vlm.inference.wrapper import OpenVLM

    try:
        model = OpenVLM.from_pretrained(args.checkpoint, device=args.device)
        if args.image:
            vectors = model.encode_image(args.image, args.vision_feature_layer)
        else:
            vectors = model.encode_text(args.text, args.text_feature_layer)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    array = vectors.cpu().numpy().astype(np.float32)
    if args.out:
        np.save(args.out, array)
        print(f"wrote {array.shape[0]}x{array.shape[1]} embeddings to {args.out}")
        return 0
    for name, row in zip(args.image or args.text, array):
        print(f"{name}: {' '.join(f'{x:.6f}' for x in row)}")
    return 0
