#!/usr/bin/env python
"""Loader throughput: our `ShardLoader` (exact, resumable order) vs a plain webdataset pipeline, and resume cost.

    python bench/loader.py                       # 8 shards x 256 photo-like JPEGs of 640x480 → 224 px, 2 workers
    python bench/loader.py --image-size 384      # small sources: draft-mode JPEG decoding cannot help
    python bench/loader.py --shards 32 --per-shard 1000 --workers 8 --resume-step 20000

Both pipelines decode, resize to `--target` and tokenize (prefix_lm, the demo BPE) the same shards with the
same number of DataLoader workers, batches of `--batch`. webdataset does it its natural way: shard shuffle,
split by node/worker, a sample shuffle buffer, `decode("pil")`, map(resize + tokenize), `batched` in the
workers. Throughput is measured after the first batch (steady state) and over the whole pass (with start-up);
runs alternate, `--repeats` times; the medians are printed, and the ratio is the median of the per-repeat
ratios (each repeat's two runs see the same machine load). Then the time to the first
batch after `load_state_dict` at step 0 and at `--resume-step` (a state computed from the order alone and
checked against a really iterated one).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import REPO, make_image_shards, median, parse_size  # noqa: F401 (REPO puts the package on sys.path)
from PIL import Image


def build_ours(pattern: str, data: Path, args, workers: int | None = None):
    from open_vlm.config.schema import DataConfig, SourceConfig
    from open_vlm.data.build import build_loader
    from open_vlm.tokenize.registry import build_processor
    from open_vlm.tokenize.tokenizers import load_tokenizer

    tok = load_tokenizer(str(data / "tokenizer"))
    processor, collate = build_processor("prefix_lm", tok, num_image_tokens=args.image_tokens, max_len=32)
    cfg = DataConfig(
        sources=[SourceConfig(name="bench", urls=[pattern])],
        batch_size=args.batch,
        num_workers=args.workers if workers is None else workers,
        num_streams=args.streams,
    )
    return build_loader(
        cfg, seed=0, global_batch=args.batch, image_size=args.target, process=processor, collate=collate
    )


def build_webdataset(pattern: str, data: Path, args):
    import webdataset as wds

    from open_vlm.tokenize.registry import build_processor
    from open_vlm.tokenize.tokenizers import load_tokenizer

    tok = load_tokenizer(str(data / "tokenizer"))
    processor, collate = build_processor("prefix_lm", tok, num_image_tokens=args.image_tokens, max_len=32)
    size = args.target

    def resize_tokenize(sample: dict) -> dict:
        image = sample["jpg"].convert("RGB").resize((size, size), Image.BICUBIC, reducing_gap=None)
        return processor({"image": torch.from_numpy(np.array(image)), "text": sample["txt"]})

    dataset = (
        wds.WebDataset(pattern, shardshuffle=100, nodesplitter=wds.split_by_node, seed=0, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .map(resize_tokenize)
        .batched(args.batch, collation_fn=collate, partial=False)
    )
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers)


def run_pass(loader, num_batches: int) -> tuple[float, float]:
    """(samples/s after the first batch, samples/s including start-up) over `num_batches` batches."""
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    n = 0
    for _ in range(num_batches - 1):
        batch = next(it)
        n += batch["input_ids"].shape[0]
    t2 = time.perf_counter()
    n_all = n + first["input_ids"].shape[0]
    del it
    return n / (t2 - t1), n_all / (t2 - t0)


def state_at_step(loader, step: int) -> dict:
    """The loader state after `step` steps of one source: the position is all there is (data order v2)."""
    sd = loader.local_state_dict()
    return {**sd, "step": step, "groups_taken": [step], "positions": [step * loader.settings.global_batch]}


def first_batch_seconds(pattern: str, data: Path, args, state: dict) -> float:
    loader = build_ours(pattern, data, args)
    loader.load_state_dict(state)
    t0 = time.perf_counter()
    next(iter(loader))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "open_vlm_bench_loader")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--image-size", type=parse_size, default="640x480", help="stored JPEG size: WxH or a side")
    parser.add_argument("--target", type=int, default=224, help="model image size")
    parser.add_argument("--image-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resume-step", type=int, default=1000)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args(argv)

    width, height = args.image_size
    data = args.data / f"{args.shards}x{args.per_shard}-{width}x{height}px"
    t0 = time.perf_counter()
    pattern = make_image_shards(data, args.shards, args.per_shard, (width, height))
    print(f"shards: {data} ({time.perf_counter() - t0:.1f}s to prepare)")
    total = args.shards * args.per_shard
    num_batches = total // args.batch // max(1, args.workers) * max(1, args.workers)  # one pass of webdataset

    if not args.skip_throughput:
        ours, base = [], []
        for r in range(args.repeats):
            base.append(run_pass(build_webdataset(pattern, data, args), num_batches))
            ours.append(run_pass(build_ours(pattern, data, args), num_batches))
            print(f"  repeat {r}: webdataset {base[-1][0]:7.1f} samples/s, open_vlm {ours[-1][0]:7.1f} samples/s")
        for label, k in (("steady (after 1st batch)", 0), ("whole pass (with start-up)", 1)):
            o, b = median([x[k] for x in ours]), median([x[k] for x in base])
            ratio = median([x[k] / y[k] for x, y in zip(ours, base)])
            print(f"{label:28s} open_vlm {o:7.1f}  webdataset {b:7.1f}  ratio {ratio:.2f} (median of repeats)")

    if args.skip_resume:
        return 0
    check = build_ours(pattern, data, args, workers=0)
    it = iter(check)
    for _ in range(5):
        next(it)
    assert state_at_step(check, 5) == check.local_state_dict(), "constructed state is wrong"
    deep = state_at_step(check, args.resume_step)
    start = state_at_step(check, 0)
    t_start, t_deep = [], []
    for _ in range(args.repeats):
        t_start.append(first_batch_seconds(pattern, data, args, start))
        t_deep.append(first_batch_seconds(pattern, data, args, deep))
    epochs = args.resume_step * args.batch / total
    print(
        f"time to first batch: step 0 {median(t_start):.2f}s, step {args.resume_step} ({epochs:.1f} epochs in) "
        f"{median(t_deep):.2f}s, ratio {median(t_deep) / median(t_start):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
