#!/usr/bin/env python
"""Write the demo shards: shapes of different colours and places, with captions, questions or text that say so.

    python tools/make_demo_data.py --out data/demo
    python tools/make_demo_data.py --out data/mixture --sets captions,vqa,text   # configs/mixture.yaml

Sets (`--sets`, default `captions`):
- `captions`: `demo-000000.tar ...` (`<key>.jpg` + `<key>.txt` caption + `<key>.json` attributes), `examples/`;
- `vqa`: `vqa/vqa-000000.tar ...` (`<key>.jpg` + `<key>.json` `{"question", "answer": [...]}`: what colour, which
  shape, where; "where" has two accepted answers);
- `text`: `text/text-000000.tar ...` (`<key>.txt` alone: sentences about shapes, modality `text`).
Each set gets its `manifest.json`; `tokenizer/` is a small BPE (HF format) trained on the text of the sets written,
so the demo needs no downloads.
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


QUESTIONS = {
    "colour": "what colour is the shape?",
    "shape": "which shape is it?",
    "place": "where is the shape?",
}


def caption_sample(rng: random.Random, size: int, key: str) -> dict:
    image, attrs = draw_sample(rng, size)
    return {"__key__": key, "jpg": jpeg(image), "txt": caption_of(attrs), "json": json.dumps({"key": key, **attrs})}


def answers_of(attrs: dict, asked: str) -> list[str]:
    """The accepted answers (VQA style: several annotators may say it differently)."""
    return [attrs[asked], f"on the {attrs[asked]}"] if asked == "place" else [attrs[asked]]


def vqa_sample(rng: random.Random, size: int, key: str) -> dict:
    image, attrs = draw_sample(rng, size)
    asked = rng.choice(list(QUESTIONS))
    meta = {"question": QUESTIONS[asked], "answer": answers_of(attrs, asked), "asked": asked, **attrs}
    return {"__key__": key, "jpg": jpeg(image), "json": json.dumps(meta)}


def text_sample(rng: random.Random, size: int, key: str) -> dict:
    return {"__key__": key, "txt": sentence_of(rng)}


def sentence_of(rng: random.Random) -> str:
    colour, shape, place = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))
    return f"the {shape} on the {place} is {colour}"


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# set name → (folder under --out, shard prefix, sample writer)
SETS = {
    "captions": ("", "demo", caption_sample),
    "vqa": ("vqa", "vqa", vqa_sample),
    "text": ("text", "text", text_sample),
}


def write_shards(
    out: Path, num_shards: int, per_shard: int, size: int, seed: int, kind: str = "captions"
) -> list[Path]:
    """The shards of one set (see the module docstring); the same seed gives the same bytes."""
    import webdataset as wds

    folder, prefix, make = SETS[kind]
    out = out / folder if folder else out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for shard in range(num_shards):
        path = out / f"{prefix}-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                sink.write(make(rng, size, f"{shard:06d}_{i:05d}"))
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


def tokenizer_texts(sets: list[str]) -> list[str]:
    """What the demo tokenizer is trained on: every text the written sets can hold."""
    texts = all_captions() + ["caption en\n"]
    if "vqa" in sets:
        attrs = [{"colour": c, "shape": s, "place": p} for c in COLOURS for s in SHAPES for p in PLACES]
        texts += [q for q in QUESTIONS.values()] + [a for at in attrs for k in QUESTIONS for a in answers_of(at, k)]
    if "text" in sets:
        texts += [f"the {s} on the {p} is {c}" for c in COLOURS for s in SHAPES for p in PLACES]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", default="captions", help=f"comma-separated, of: {', '.join(SETS)}")
    args = parser.parse_args(argv)
    sets = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in sets if name not in SETS]
    if unknown or not sets:
        parser.error(f"--sets: unknown set(s) {unknown} (known: {', '.join(SETS)})")

    from open_vlm.data.manifest import write_manifest
    from open_vlm.tokenize.demo_tokenizer import build_demo_tokenizer

    out = Path(args.out)
    vocab = 160 if sets == ["captions"] else 200  # the demo's own tokenizer stays as it was
    build_demo_tokenizer(tokenizer_texts(sets), out / "tokenizer", vocab_size=vocab)
    for offset, kind in enumerate(sets):
        seed = args.seed + 1000 * offset if kind != "captions" else args.seed
        paths = write_shards(out, args.num_shards, args.per_shard, args.image_size, seed, kind)
        manifest = write_manifest([str(p) for p in paths], paths[0].parent / "manifest.json")
        total = sum(s.num_samples for s in manifest.shards)
        print(f"{kind}: wrote {len(paths)} shards ({total} samples) and a manifest to {paths[0].parent}")
        if kind == "captions":
            write_examples(out / "examples", args.image_size, seed=args.seed + 1)
    print(f"tokenizer: {out / 'tokenizer'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
