#!/usr/bin/env python
"""Convert bottom-up-attention weights (detectron2 layout) into a state dict for `extract.region.backbone
resnet101_c4`:

    python tools/convert_bottom_up_attention.py faster_rcnn_from_caffe.pkl vg_resnet101_c4.safetensors

IN: py-bottom-up-attention's `.pkl` (numpy arrays only are read), or a `.pth`/`.pt`/`.safetensors` of the
detectron2 model's state dict. OUT: `.safetensors` or `.pt`. Then set `extract.region.weights: OUT` and
`extract.region.num_classes: 1601` (1600 Visual Genome classes + background). `extract.region.weights` also
takes IN directly; converting once saves the conversion on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="detectron2 bottom-up-attention weights (.pkl/.pth/.pt/.safetensors)")
    parser.add_argument("out", help="output state dict (.safetensors or .pt)")
    args = parser.parse_args(argv)

    import fsspec
    import torch

    from open_vlm.extract.bottom_up_weights import convert_detectron2_c4, is_detectron2_c4, read_weights_file

    try:
        with fsspec.open(args.source, "rb") as f:
            state = read_weights_file(f.read(), args.source)
        if not is_detectron2_c4(state):
            raise ValueError(
                f"{args.source}: no backbone.stem.conv1 / roi_heads.res5 keys: not detectron2 R-C4 weights"
            )
        converted = convert_detectron2_c4(state)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in converted.items()}, args.out)
    else:
        torch.save(converted, args.out)
    classes = converted["roi_heads.box_predictor.cls_score.weight"].shape[0]
    print(f"wrote {len(converted)} tensors to {args.out} (extract.region.num_classes: {classes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
