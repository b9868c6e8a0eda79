#!/usr/bin/env python
"""Tokenize shards once: run a task's processor over every sample and write its outputs as `.npy` members.

    python tools/tokenize_shards.py --urls 'data/demo/demo-{000000..000003}.tar' --modality image_text \
        --task prefix_lm --tokenizer data/demo/tokenizer --option num_image_tokens=16 --option max_len=16 \
        --out data/demo-prefix_lm

Each input shard becomes a shard of the same name in `--out` holding the same samples in the same order
(image bytes and captions copied, processor tensors as `<key>.<name>.npy`), plus `manifest.json`. Train on it
with a source of `modality: pretokenized` and the same task: the batches are the same as on the fly.
Samples that fail to decode are skipped and counted (the on-the-fly loader skips them too).
"""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("tokenize_shards")


def parse_options(items: list[str]) -> dict:
    """`key=value` pairs; values are read as YAML scalars (`16` → int, `true` → bool, text stays text)."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option needs key=value, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


def tokenize_shard(url: str, out_url: str, modality: str, processor, image_size: int) -> Counter:
    """Process every sample of one shard into `out_url`; returns counts of written and skipped samples."""
    import fsspec
    import webdataset as wds

    from open_vlm.data.decode import SampleError, decode_sample
    from open_vlm.data.shards import iter_tar_samples, open_url
    from open_vlm.tokenize.pretokenized import stored_members

    counts: Counter = Counter()
    with open_url(url) as stream, fsspec.open(out_url, "wb") as sink_file:
        sink = wds.TarWriter(sink_file)
        for raw in iter_tar_samples(stream, url):
            try:
                decoded = decode_sample(raw, modality, image_size)
            except SampleError as err:
                log.warning("skipped %s in %s (%s): %s", raw["__key__"], url, err.kind, err)
                counts[err.kind] += 1
                continue
            sink.write(stored_members(raw, processor(decoded, None)))
            counts["written"] += 1
        sink.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--urls", action="append", required=True, help="shard URL pattern(s), brace-expandable")
    parser.add_argument("--modality", default="image_text", help="decoder of the input shards")
    parser.add_argument("--task", required=True, help="processor task (see open_vlm.tokenize.registry)")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer dir/URL or openclip:<model>")
    parser.add_argument("--option", action="append", default=[], help="task option key=value (repeatable)")
    parser.add_argument("--image-size", type=int, default=16, help="decode size (pixels are not stored)")
    parser.add_argument("--out", required=True, help="output directory, local or fsspec URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import fsspec

    from open_vlm.data.manifest import write_manifest
    from open_vlm.data.shards import expand_urls
    from open_vlm.tokenize.registry import build_processor
    from open_vlm.tokenize.tokenizers import load_tokenizer

    processor, _ = build_processor(args.task, load_tokenizer(args.tokenizer), **parse_options(args.option))
    urls = expand_urls(args.urls)
    names = [posixpath.basename(u) for u in urls]
    if len(set(names)) != len(names):
        raise SystemExit("input shards must have distinct file names (outputs keep them)")
    fs, root = fsspec.core.url_to_fs(args.out)
    fs.makedirs(root, exist_ok=True)
    out_urls = [posixpath.join(args.out, name) for name in names]
    total: Counter = Counter()
    for url, out_url in zip(urls, out_urls):
        counts = tokenize_shard(url, out_url, args.modality, processor, args.image_size)
        log.info("%s → %s: %s", url, out_url, dict(counts))
        total += counts
    write_manifest(out_urls, posixpath.join(args.out, "manifest.json"))
    print(
        f"wrote {total['written']} samples in {len(out_urls)} shards to {args.out}; skipped {total.total() - total['written']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
