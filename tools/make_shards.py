#!/usr/bin/env python
"""Write WebDataset image-caption shards (and their manifest) from an image folder or a paired folder.

    # an image folder + captions, jsonl lines {"image": "relpath", "caption": "..."} or csv `image,caption`
    python tools/make_shards.py --images photos/ --captions captions.jsonl --out data/mine --prefix mine
    # a folder of <name>.jpg + <name>.txt pairs (any depth)
    python tools/make_shards.py --pairs dataset/ --out data/mine --prefix mine --maxcount 5000

Shards are `<out>/<prefix>-000000.tar ...` with members `<key>.<ext>` (image bytes as they are, not
re-encoded) and `<key>.txt` (the caption); `<out>/manifest.json` is written at the end. A sample's key is its
image path relative to the folder without the extension, with `/`, `.` and anything outside
`[A-Za-z0-9_-]` replaced by `_` (WebDataset splits keys at the first dot). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

IMAGE_EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


class InputError(Exception):
    """Bad input: the message says which file or line."""


def sample_key(relpath: str) -> str:
    """A WebDataset key from an image's relative path: extension dropped, other dots and odd characters → `_`."""
    stem = relpath[: -len(Path(relpath).suffix)] if Path(relpath).suffix else relpath
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem.strip("/"))


def read_captions(path: Path) -> list[tuple[str, str]]:
    """(image relpath, caption) rows of a jsonl file or a csv file with header `image,caption`."""
    rows = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise InputError(f"{path}: csv header must have columns image,caption (got {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                if not row["image"]:
                    raise InputError(f"{path}:{line}: empty image column")
                rows.append((row["image"], row["caption"] or ""))
        return rows
    for line, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            rows.append((str(row["image"]), str(row["caption"])))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise InputError(f'{path}:{line}: expected {{"image": ..., "caption": ...}} ({err})') from err
    return rows


def captioned_images(images: Path, captions: Path) -> list[tuple[Path, str]]:
    out = []
    for rel, caption in read_captions(captions):
        path = images / rel
        if not path.is_file():
            raise InputError(f"{captions}: image {rel} not found under {images}")
        out.append((path, caption))
    return out


def paired_images(folder: Path) -> list[tuple[Path, str]]:
    """`<name>.<image ext>` + `<name>.txt` pairs, sorted by path; images without a caption are an error."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        caption = path.with_suffix(".txt")
        if not caption.is_file():
            raise InputError(f"{path}: no caption file {caption.name}")
        out.append((path, caption.read_text(encoding="utf-8").strip()))
    return out


def samples(items: list[tuple[Path, str]], root: Path) -> Iterator[dict]:
    seen: dict[str, Path] = {}
    for path, caption in items:
        ext = IMAGE_EXTS.get(path.suffix.lower())
        if ext is None:
            raise InputError(f"{path}: not an image ({'/'.join(sorted(IMAGE_EXTS))})")
        key = sample_key(path.relative_to(root).as_posix())
        if key in seen:
            raise InputError(f"{path} and {seen[key]} both map to key {key!r}")
        seen[key] = path
        yield {"__key__": key, ext: path.read_bytes(), "txt": caption}


def write_shards(
    items: list[tuple[Path, str]],
    root: Path,
    out: Path,
    prefix: str,
    maxcount: int,
    maxsize: int,
    progress: bool = True,
) -> list[str]:
    """Write the shards; returns their paths in order."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for sample in tqdm(samples(items, root), total=len(items), unit="img", disable=not progress, desc="shards"):
            sink.write(sample)
        written = sink.shard
    return [pattern % i for i in range(written)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="image folder (with --captions)")
    parser.add_argument("--captions", type=Path, help="captions file: .jsonl or .csv (image,caption)")
    parser.add_argument("--pairs", type=Path, help="folder of <name>.jpg + <name>.txt pairs")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--prefix", default="shard", help="shard name prefix (default: shard)")
    parser.add_argument("--maxcount", type=int, default=10000, help="samples per shard at most (default 10000)")
    parser.add_argument("--maxsize", type=int, default=1_000_000_000, help="bytes per shard at most (default 1e9)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if (args.pairs is None) == (args.images is None or args.captions is None):
        parser.error("give either --images DIR --captions FILE, or --pairs DIR")
    if args.maxcount < 1 or args.maxsize < 1:
        parser.error("--maxcount and --maxsize must be positive")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.prefix):
        parser.error("--prefix may contain letters, digits, _ and - only")

    from open_vlm.data.manifest import write_manifest

    root = args.pairs if args.pairs is not None else args.images
    try:
        if not root.is_dir():
            raise InputError(f"{root}: not a folder")
        items = paired_images(root) if args.pairs is not None else captioned_images(root, args.captions)
        if not items:
            raise InputError(f"{root}: no images found")
        urls = write_shards(items, root, args.out, args.prefix, args.maxcount, args.maxsize, not args.quiet)
    except (InputError, OSError, UnicodeDecodeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with tqdm(total=len(urls), unit="shard", disable=args.quiet, desc="manifest") as bar:
        manifest = write_manifest(urls, str(args.out / "manifest.json"), on_shard=lambda info: bar.update(1))
    print(f"wrote {len(urls)} shards ({manifest.num_samples} samples) and manifest.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
