#!/usr/bin/env python
"""Write the demo image-caption shards: shapes of different colours and places, with captions that say so.

    python tools/make_demo_data.py --out data/demo

Writes `demo-000000.tar ...` (WebDataset: `<key>.jpg` + `<key>.txt` + `<key>.json`), `manifest.json`, and
`tokenizer/`, a small BPE (HF format) trained on the captions so the demo needs no downloads.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72)}


def draw_sample(rng: random.Random, size: int) -> tuple[Image.Image, dict]:
    """One image and its attributes; the caption is a pure function of the attributes."""
    colour, shape, place = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))
    background = tuple(rng.randint(225, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    cx, cy = (c * size for c in PLACES[place])
    r = size * rng.uniform(0.16, 0.22)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image, {"colour": colour, "shape": shape, "place": place}


def caption_of(attrs: dict) -> str:
    return f"a {attrs['colour']} {attrs['shape']} on the {attrs['place']}"


def write_shards(out: Path, num_shards: int, per_shard: int, size: int, seed: int) -> list[Path]:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for shard in range(num_shards):
        path = out / f"demo-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                image, attrs = draw_sample(rng, size)
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=90)
                key = f"{shard:06d}_{i:05d}"
                sink.write(
                    {
                        "__key__": key,
                        "jpg": buf.getvalue(),
                        "txt": caption_of(attrs),
                        "json": json.dumps({"key": key, **attrs}),
                    }
                )
        paths.append(path)
    return paths


def write_examples(out: Path, size: int, seed: int, count: int = 4) -> list[Path]:
    """A few held-out images for `open-vlm generate`, each named after its true caption."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for _ in range(count):
        image, attrs = draw_sample(rng, size)
        path = out / (caption_of(attrs).replace(" ", "_") + ".jpg")
        image.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def all_captions() -> list[str]:
    return [caption_of({"colour": c, "shape": s, "place": p}) for c in COLOURS for s in SHAPES for p in PLACES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from open_vlm.data.manifest import write_manifest
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    out = Path(args.out)
    paths = write_shards(out, args.num_shards, args.per_shard, args.image_size, args.seed)
    manifest = write_manifest([str(p) for p in paths], out / "manifest.json")
    build_demo_tokenizer(all_captions() + ["caption en\n"], out / "tokenizer")
    write_examples(out / "examples", args.image_size, seed=args.seed + 1)
    total = sum(s.num_samples for s in manifest.shards)
    print(f"wrote {len(paths)} shards ({total} samples), manifest and tokenizer to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
