#!/usr/bin/env python
"""Run the reliability drills in their long form, by hand (the CI form is tests/drills/, a few faults each).

    python tools/drill.py kills --kills 20              # kill -9 (any moment, in sync/async saves), a dead rank, SIGTERM
    python tools/drill.py s3 --repeat 3 --seconds 20    # the S3 endpoint frozen during shard reads and a save
    python tools/drill.py shards --repeat 3             # shards cut or deleted before, between and during runs
    python tools/drill.py damage --repeat 3             # checkpoints damaged after commit: fallback on resume
    python tools/drill.py diskfull --repeat 3           # the checkpoint disk fills up
    python tools/drill.py all --kills 20 --repeat 3

Each drill runs real torchrun jobs (2 gloo ranks, the tiny demo model) and compares them with an uninterrupted run
of the same config, bit for bit (losses, consumed records, final weights). The report of every drill is printed
and appended to `<out>/results.jsonl`. Exit status: 0 every drill passed, 1 one failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DRILLS = ("kills", "s3", "shards", "damage", "diskfull")


def reference_job(out: Path, steps: int):
    """Demo data, drill data and the uninterrupted reference run of `steps` steps (reused when already there)."""
    from make_demo_data import main as make_demo

    from tests.drills.harness import Job, finish_job
    from tests.drills.setup import drill_data

    demo = out / "demo"
    if not (demo / "tokenizer").exists():
        assert make_demo(["--out", str(demo), "--num-shards", "4", "--per-shard", "32", "--seed", "3"]) == 0
    data = out / "data"
    if not data.exists():
        drill_data(demo, data)
    (out / f"reference-{steps}").mkdir(exist_ok=True)
    job = Job(out / f"reference-{steps}", data, "reference", {"train": {"max_steps": steps}})
    if job.last_step() != steps:
        shutil.rmtree(job.folder, ignore_errors=True)
        outcome = finish_job(job)
        if not outcome.ok:
            raise SystemExit(f"error: the reference run failed: {outcome.line()}")
    return job


def fresh(out: Path, name: str) -> Path:
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def kills(out: Path, args) -> Iterator:
    from tests.drills.harness import FAULTS, Job, run_faults

    steps = max(24, 6 * args.kills)
    reference = reference_job(out, steps)
    rng = random.Random(args.seed)
    kinds = [list(FAULTS)[i % len(FAULTS)] for i in range(args.kills)]
    rng.shuffle(kinds)
    job = Job(fresh(out, "kills"), reference.data, "kills", {"train": {"max_steps": steps}})
    yield run_faults(reference, job, kinds, seed=args.seed)


def s3(out: Path, args) -> Iterator:
    import os

    import s3fs

    from tests.drills.harness import DrillResult, Job, checkpoints_verify, compare
    from tests.drills.outages import s3_freezes
    from tests.drills.setup import MotoServer, drill_sources

    reference = reference_job(out, 24)
    server = MotoServer.start()
    try:
        for i in range(args.repeat):
            rng = random.Random(args.seed + i)
            bucket = server.bucket_with(reference.data)
            sections = {
                "data": {"sources": drill_sources(bucket)},
                "checkpoint": {"dir": f"{bucket}/ckpt", "every_steps": 16},
            }
            job = Job(fresh(out, f"s3-{i}"), reference.data, "s3", sections, env=server.env)
            plan = [("reads", rng.randint(9, 11)), ("save", 16)]
            outcomes = s3_freezes(job, server, plan, args.seconds, rng)
            os.environ.update(server.env)
            s3fs.S3FileSystem.clear_instance_cache()
            yield DrillResult(f"s3-{i}", outcomes, compare(reference, job) + checkpoints_verify(job))
    finally:
        server.stop()


def shards(out: Path, args) -> Iterator:
    from tests.drills.harness import DrillResult, Job, compare_positions
    from tests.drills.outages import DAMAGED_SHARDS, shard_damage

    reference = reference_job(out, 24)
    for i in range(args.repeat):
        folder = fresh(out, f"shards-{i}")
        data = folder / "data"
        shutil.copytree(reference.data, data, ignore=shutil.ignore_patterns("*.index.npz"))
        job = Job(folder, data, "shards")
        outcomes = shard_damage(job, random.Random(args.seed + i))
        yield DrillResult(f"shards-{i}", outcomes, compare_positions(reference, job, DAMAGED_SHARDS))


def damage(out: Path, args) -> Iterator:
    from tests.drills.harness import DrillResult, Job, checkpoints_verify, compare
    from tests.drills.outages import damaged_checkpoints

    reference = reference_job(out, 24)
    for i in range(args.repeat):
        job = Job(fresh(out, f"damage-{i}"), reference.data, "fallback")
        outcomes = damaged_checkpoints(reference, job, random.Random(args.seed + i))
        yield DrillResult(f"damage-{i}", outcomes, compare(reference, job) + checkpoints_verify(job))


def diskfull(out: Path, args) -> Iterator:
    from tests.drills.harness import DrillResult, Job, checkpoints_verify, compare
    from tests.drills.outages import disk_full, rank_bytes

    reference = reference_job(out, 24)
    per_save = max(rank_bytes(reference))
    for i in range(args.repeat):
        rng = random.Random(args.seed + i)
        folder = fresh(out, f"diskfull-{i}")
        job = Job(folder, reference.data, "diskfull", {"checkpoint": {"dir": f"diskfull://{folder}/ckpt"}})
        outcomes = disk_full(job, int(rng.uniform(1.2, 4.8) * per_save))
        yield DrillResult(f"diskfull-{i}", outcomes, compare(reference, job) + checkpoints_verify(job))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drill.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("drill", choices=[*DRILLS, "all"])
    parser.add_argument("--kills", type=int, default=20, help="kills: faults injected into one run (default 20)")
    parser.add_argument("--repeat", type=int, default=3, help="other drills: runs (default 3)")
    parser.add_argument("--seconds", type=float, default=20.0, help="s3: how long each freeze lasts (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work folder (default: a new temporary one, kept)")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.repeat < 1 or args.seconds <= 0:
        parser.error("--kills, --repeat and --seconds must be positive")
    out = Path(args.out or tempfile.mkdtemp(prefix="open_vlm_drills_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runners = {"kills": kills, "s3": s3, "shards": shards, "damage": damage, "diskfull": diskfull}
    passed = True
    for name in DRILLS if args.drill == "all" else [args.drill]:
        began = time.monotonic()
        for result in runners[name](out, args):  # each drill yields its runs one by one: time each
            print(result.report(), flush=True)
            record = {**result.as_json(), "kind": name, "seed": args.seed, "seconds": time.monotonic() - began}
            began = time.monotonic()
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            passed = passed and result.passed
    print(f"results: {out / 'results.jsonl'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
