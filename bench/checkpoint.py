#!/usr/bin/env python
"""Checkpoint throughput: `Checkpointer` save/load MB/s vs raw disk (dd) in the same run, and async-save stall.

    python bench/checkpoint.py                       # ~500 MB (model + AdamW state) under /tmp
    python bench/checkpoint.py --size-mb 4000 --dir /nvme/bench

The state is a stack of Linear(2048, 2048) layers plus AdamW's two moments, sized to `--size-mb`. Each
repeat writes `dd if=/dev/zero bs=1M count=<size> conv=fdatasync` (the disk's sequential write bandwidth with
a flush, like our fsync'ed save), a synchronous save, a load, and an async save inside a training step.

The async save's stall is what the training loop loses: the time until `save()` returns, plus the wait for the
staged copy before the next optimizer step (`Checkpointer.staged()`, as the trainer calls it), after that
step's forward and backward (`--step-rows` rows through the model; timed alone too, alternating, to show how
much the background copy and write slow it). `wait()` then commits the save. Medians over `--repeats`; the
first async save (which allocates the staging buffers) is left out. Loads right after a save are served largely
from the page cache (we do not drop caches on a shared machine), so load MB/s is an upper bound for a cold read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from common import REPO, median  # noqa: F401 (REPO puts the package on sys.path)


def build_state(size_mb: int, width: int = 2048) -> tuple[nn.Module, torch.optim.Optimizer, float]:
    """A model + AdamW whose parameters and two moments total about `size_mb` MB (fp32)."""
    layers = max(1, round(size_mb * 1e6 / 12 / (width * width + width)))
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # materialise exp_avg / exp_avg_sq
    optimizer.zero_grad(set_to_none=True)
    nbytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return model, optimizer, nbytes / 1e6


def dd_seconds(folder: Path, size_mb: int) -> float:
    target = folder / "dd.bin"
    t0 = time.perf_counter()
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={size_mb}", "conv=fdatasync"],
        check=True,
        capture_output=True,
    )
    elapsed = time.perf_counter() - t0
    target.unlink()
    return elapsed


def forward_backward(model: nn.Module, rows: int, width: int = 2048) -> float:
    """One training step's forward and backward (no update); its seconds."""
    t0 = time.perf_counter()
    model(torch.randn(rows, width)).square().mean().backward()
    return time.perf_counter() - t0


def save(ckpt, step: int, model, optimizer, async_save: bool) -> str:
    return ckpt.save(
        step,
        model=model,
        optimizer=optimizer,
        extra={"step": step},
        rng={},
        data_state={},
        meta={},
        files={},
        async_save=async_save,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step-rows", type=int, default=256, help="rows of the simulated forward/backward")
    args = parser.parse_args(argv)

    from open_vlm.checkpoint.checkpointer import Checkpointer

    model, optimizer, mb = build_state(args.size_mb)
    work = Path(tempfile.mkdtemp(prefix="open_vlm_bench_ckpt_", dir=args.dir))
    print(f"state: {mb:.0f} MB (model + AdamW), directory {work}")
    rows: dict[str, list[float]] = {k: [] for k in ("dd", "save", "load", "stall", "async_total", "step", "step_alone")}
    try:
        ckpt = Checkpointer(str(work / "ckpts"), keep_last=1)
        step = 0
        for r in range(-1, args.repeats):  # repeat -1 warms up: the first async save allocates the staging buffers
            rows["dd"].append(dd_seconds(work, round(mb)))
            step += 1
            t0 = time.perf_counter()
            url = save(ckpt, step, model, optimizer, async_save=False)
            rows["save"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ckpt.load(url, model, optimizer)
            rows["load"].append(time.perf_counter() - t0)
            rows["step_alone"].append(forward_backward(model, args.step_rows))
            step += 1
            t0 = time.perf_counter()
            save(ckpt, step, model, optimizer, async_save=True)
            returned = time.perf_counter() - t0
            rows["step"].append(forward_backward(model, args.step_rows))
            t1 = time.perf_counter()
            ckpt.staged()  # what the trainer waits for before the optimizer step
            rows["stall"].append(returned + time.perf_counter() - t1)
            optimizer.zero_grad(set_to_none=True)
            ckpt.wait()
            rows["async_total"].append(time.perf_counter() - t0)
            last = {k: v[-1] for k, v in rows.items()}
            print(
                f"  repeat {r}: dd {last['dd']:.2f}s, save {last['save']:.2f}s, load {last['load']:.2f}s, "
                f"async stall {last['stall']:.3f}s (save() returned after {returned:.3f}s; committed after "
                f"{last['async_total']:.2f}s), forward/backward {last['step']:.2f}s (alone {last['step_alone']:.2f}s)"
            )
            if r < 0:
                for values in rows.values():
                    values.pop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = {k: median(v) for k, v in rows.items()}
    disk, saved, loaded = mb / m["dd"], mb / m["save"], mb / m["load"]
    print(f"disk (dd, fdatasync) {disk:7.0f} MB/s")
    print(f"save (sync, fsync)   {saved:7.0f} MB/s  = {saved / disk:.0%} of disk")
    print(f"load (page cache)    {loaded:7.0f} MB/s")
    print(f"async save stall     {m['stall']:.3f}s = {m['stall'] / m['save']:.1%} of a sync save ({m['save']:.2f}s)")
    print(
        f"forward/backward     {m['step']:.2f}s during the async save, {m['step_alone']:.2f}s alone "
        f"(the background copy and write share this machine's {os.cpu_count()} cores)"
    )
    print(f"cpus {os.cpu_count()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
