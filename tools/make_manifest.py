#!/usr/bin/env python
"""Write the manifest (exact sample counts, sizes, md5 checksums, etags) of WebDataset shards.

    python tools/make_manifest.py --urls 'data/coco/coco-{000000..000099}.tar' --out data/coco/manifest.json
    python tools/make_manifest.py --urls 's3://bucket/coco/coco-{000000..000099}.tar' \\
        --out s3://bucket/coco/manifest.json --workers 32

Every shard is read end to end (in parallel threads), so a corrupt or truncated shard is found now and
named; the manifest is written only when every shard is good. Shard URLs next to the manifest are stored
relative to it. Exit status: 0 written, 1 a shard is bad or missing, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", nargs="+", required=True, help="shard paths or URLs; brace patterns expand")
    parser.add_argument("--out", required=True, help="manifest path or URL (local, s3://, any fsspec URL)")
    parser.add_argument("--workers", type=int, default=8, help="shards read at once (threads; default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from open_vlm.data.manifest import write_manifest
    from open_vlm.data.shards import expand_urls

    urls = expand_urls(args.urls)
    if not urls:
        parser.error("--urls expands to no shard")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    with tqdm(total=len(urls), unit="shard", disable=args.quiet, desc="manifest") as bar:
        try:
            manifest = write_manifest(urls, args.out, args.workers, on_shard=lambda info: bar.update(1))
        except ValueError as err:  # describe_shard names the corrupt shard
            bar.close()
            print(f"error: {err}", file=sys.stderr)
            return 1
        except OSError as err:  # a missing shard, or an unwritable --out
            bar.close()
            print(f"error: {err.__class__.__name__}: {err}", file=sys.stderr)
            return 1
    size = sum(s.size for s in manifest.shards)
    print(f"{len(manifest.shards)} shards, {manifest.num_samples} samples, {size / 1e6:.1f} MB -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
