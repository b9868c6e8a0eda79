#!/usr/bin/env python
"""The data order at scale, simulated: a synthetic manifest, no shard read.

    python bench/scale_sim.py --shards 1000000 --ranks 1024 --workers 8

Writes a synthetic `manifest.json` (and its index) of `--shards` shards, then measures, each in a fresh process:
- the first-time indexing of the JSON (what a manifest written by hand costs once);
- what every training process pays to be ready to read: load the manifest index, build the order, plan the
  first step for one rank: wall time and peak memory above the imports;
- the per-step planning time of one rank (plan, its slots, the sample of each slot), at step 0 and deep in;
- the size of a checkpoint's loader state and of its consumed record (meta.json), mid-epoch.
Then it checks, on a sample of ranks: no sample repeats within an epoch, and the global order (every step's
slots, and the samples of the sampled ranks' slots) is the same at `--ranks`, `--ranks - 24` and `--ranks / 2`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO  # noqa: F401 (puts the package on sys.path)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_synthetic(folder: Path, shards: int, seed: int) -> str:
    """manifest.json for `shards` shards of 500-1500 samples (no tar files), then its index."""
    import numpy as np

    from open_vlm.data.manifest import ShardManifest, UrlColumn
    from open_vlm.data.manifest_index import write_index

    rng = np.random.default_rng(seed)
    counts = rng.integers(500, 1500, shards)
    path = folder / "manifest.json"
    with open(path, "w") as f:  # streamed: the JSON a user's own tool would write
        f.write('{"format": "open_vlm.manifest/1", "shards": [\n')
        for i, n in enumerate(counts.tolist()):
            sep = ",\n" if i + 1 < shards else "\n"
            f.write(f'{{"url": "shard-{i:07d}.tar", "num_samples": {n}, "size": {n * 110_000}, ')
            f.write(f'"checksum": "md5:{i:032x}", "etag": null}}{sep}')
        f.write("]}\n")
    urls = UrlColumn(str(folder) + "/", np.array([f"shard-{i:07d}.tar".encode() for i in range(shards)]))
    manifest = ShardManifest.from_columns(
        urls, counts, counts * 110_000, [f"md5:{i:032x}" for i in range(shards)], [None] * shards
    )
    write_index(manifest, str(path), patterns=[str(folder / f"shard-{{0000000..{shards - 1:07d}}}.tar")])
    return str(path)


def child_index(path: str) -> dict:
    """First-time indexing of a copy of the JSON (as a manifest written by another tool): parse, version, index."""
    import shutil

    from open_vlm.data.manifest_index import training_manifest

    copy = Path(path).parent / "by_hand" / "manifest.json"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(path, copy)
    path = str(copy)
    base = rss_mib()
    t0 = time.perf_counter()
    training_manifest(path)
    return {"seconds": time.perf_counter() - t0, "peak_mib": rss_mib() - base}


def child_ready(path: str, shards: int, ranks: int, workers: int, batch: int, streams: int, window: int) -> dict:
    """One training process: manifest index → order → first step of rank 0, worker 0; per-step costs."""
    import numpy as np

    from open_vlm.config.schema import SourceConfig
    from open_vlm.data.build import source_manifest
    from open_vlm.data.consumed import consumed_record
    from open_vlm.data.loader import STATE_VERSION, Source
    from open_vlm.data.order import SourceOrder
    from open_vlm.data.plan import Planner, PlanState

    folder = Path(path).parent
    base = rss_mib()
    t0 = time.perf_counter()
    cfg = SourceConfig(name="sim", urls=[str(folder / f"shard-{{0000000..{shards - 1:07d}}}.tar")])
    manifest = source_manifest(cfg)
    order = SourceOrder(manifest.counts, 0, 0, streams, window)
    planner = Planner([1.0], 0, batch, batch)
    state = planner.initial()

    def one_step(state) -> list:
        plan = planner.next_step(state)
        return [order.slot(j) for _, j in plan.rank_slots(0, ranks)[0::workers]]

    one_step(state)
    ready = time.perf_counter() - t0
    peak = rss_mib() - base
    timings = {}
    for label, step in (("step_0", 1), ("mid_epoch", order.total // batch // 2), ("epoch_5", 5 * order.total // batch)):
        state = PlanState(step, [step], [step * batch])
        t0 = time.perf_counter()
        for _ in range(10):
            one_step(state)
        timings[label] = (time.perf_counter() - t0) / 10
    mid = order.total // 2
    loader_state = {
        "version": STATE_VERSION,
        "seed": 0,
        "num_streams": [order.num_streams],
        "window": window,
        "global_batch": batch,
        "sources": ["sim"],
        "versions": [manifest.version],
        "mixing": "batch",
        "mix_group": batch,
        "step": mid // batch,
        "groups_taken": [mid // batch],
        "positions": [mid],
        "bad_samples": {},
        "world": ranks,
        "num_workers": workers,
    }
    t0 = time.perf_counter()
    record = consumed_record([order], [Source("sim", "image_text", 1.0, manifest)], [mid])
    record_seconds = time.perf_counter() - t0
    held = order.counts.nbytes + manifest.urls.names.nbytes + sum(a.nbytes for a in order.layout(0))
    held += order.nonempty.nbytes if order.nonempty is not None else 0
    return {
        "ready_seconds": ready,
        "peak_mib_above_imports": peak,
        "arrays_mib": held / 2**20,
        "plan_step_ms": {k: 1000 * v for k, v in timings.items()},
        "slots_per_rank_worker": len(range(0, batch // ranks, workers)),
        "loader_state_bytes": len(json.dumps(loader_state)),
        "consumed_record_bytes": len(json.dumps(record)),
        "consumed_record_seconds": record_seconds,
        "num_samples": order.total,
        "streams": order.num_streams,
        "dtype_check": str(np.asarray(manifest.counts).dtype),
    }


def check_orders(path: str, ranks: int, workers: int, batch: int, streams: int, window: int, steps: int) -> dict:
    """World-free global order and no repeats within an epoch, on a sample of ranks."""
    from open_vlm.data.manifest_index import training_manifest
    from open_vlm.data.order import SourceOrder
    from open_vlm.data.plan import Planner

    manifest, _ = training_manifest(path)
    order = SourceOrder(manifest.counts, 0, 0, streams, window)
    worlds = [ranks, ranks - 24, ranks // 2]
    worlds = [w for w in worlds if batch % w == 0]
    planners = {w: Planner([1.0], 0, batch, batch) for w in worlds}
    states = {w: p.initial() for w, p in planners.items()}
    sampled = sorted(random.Random(0).sample(range(min(worlds)), 8))
    seen: dict[tuple[int, int, int], int] = {}  # (epoch, shard, offset) -> position
    checked_slots = 0
    for _ in range(steps):
        plans = {w: planners[w].next_step(states[w]) for w in worlds}
        reference = plans[worlds[0]]
        everything = sorted(reference.slot(i) for i in range(batch))
        for w, plan in plans.items():
            assert plan.groups == reference.groups, f"step {plan.step}: groups differ at world {w}"
            assert sorted(s for r in range(w) for s in plan.rank_slots(r, w)) == everything, f"world {w}"
        for r in sampled:
            for w in worlds:
                for _, j in plans[w].rank_slots(r, w):
                    slot = order.slot(j)
                    key = (slot.epoch, slot.shard, slot.offset)
                    assert seen.setdefault(key, j) == j, f"sample {key} at positions {seen[key]} and {j}"
                    checked_slots += 1
    return {"worlds": worlds, "steps": steps, "sampled_ranks": sampled, "slots_checked": checked_slots}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=1_000_000)
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--streams", type=int, default=0, help="P (default: ranks x workers)")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=128_000, help="divisible by every world checked")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", choices=["index", "ready", "check"], default=None)
    parser.add_argument("--manifest", default=None)
    args = parser.parse_args(argv)
    streams = args.streams or args.ranks * args.workers
    knobs = (args.ranks, args.workers, args.global_batch, streams, args.window)
    if args.child == "index":
        print(json.dumps(child_index(args.manifest)))
        return 0
    if args.child == "ready":
        print(json.dumps(child_ready(args.manifest, args.shards, *knobs)))
        return 0
    if args.child == "check":
        print(json.dumps(check_orders(args.manifest, *knobs, args.steps)))
        return 0

    folder = args.dir or Path(tempfile.mkdtemp(prefix="open_vlm_scale_"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = write_synthetic(folder, args.shards, 0)
    print(f"synthetic manifest: {args.shards} shards at {path} ({time.perf_counter() - t0:.1f}s to write)")
    common = [
        "--manifest", path, "--shards", str(args.shards), "--ranks", str(args.ranks), "--workers", str(args.workers),
        "--streams", str(streams), "--window", str(args.window), "--global-batch", str(args.global_batch),
    ]  # fmt: skip
    indexed = run_child(["--child", "index", *common])
    print(f"first-time indexing of the JSON: {indexed['seconds']:.1f}s, peak +{indexed['peak_mib']:.0f} MiB (once)")
    ready = run_child(["--child", "ready", *common])
    print(
        f"ready to read (index + order + first step): {ready['ready_seconds']:.2f}s, peak "
        f"+{ready['peak_mib_above_imports']:.0f} MiB above imports ({ready['arrays_mib']:.0f} MiB of arrays); "
        f"{ready['num_samples']} samples, P = {ready['streams']}"
    )
    steps = ", ".join(f"{k} {v:.2f} ms" for k, v in ready["plan_step_ms"].items())
    print(f"per-step planning, one rank x worker ({ready['slots_per_rank_worker']} slots): {steps}")
    print(
        f"checkpoint: loader state {ready['loader_state_bytes']} bytes, consumed record "
        f"{ready['consumed_record_bytes'] / 1024:.0f} KiB ({ready['consumed_record_seconds']:.2f}s, mid-epoch)"
    )
    checked = run_child(["--child", "check", *common, "--steps", str(args.steps)])
    print(
        f"order checks: worlds {checked['worlds']} give the same global batches for {checked['steps']} steps; "
        f"ranks {checked['sampled_ranks']}: {checked['slots_checked']} slots, no sample twice in an epoch"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
