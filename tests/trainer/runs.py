"""Helpers to write tiny run configs and run them (single process or torchrun with 2 gloo ranks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO, run_cli

TORCHRUN = ["-m", "torch.distributed.run", "--standalone"]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def write_config(tmp: Path, demo_dir: Path, name: str, **sections) -> Path:
    """A tiny PaliGemma run on the demo shards; `sections` deep-update the defaults."""
    cfg = {
        "run": {"project": "t", "name": name, "output_dir": str(tmp / "runs")},
        "data": {
            "sources": [{"name": "shapes", "urls": [str(demo_dir / "demo-{000000..000003}.tar")], "weight": 1.0}],
            "batch_size": 2,
            "max_text_len": 16,
            "num_streams": 8,
        },
        "model": {
            "kind": "paligemma",
            "config": str(REPO / "configs/models/paligemma_tiny.yaml"),
            "tokenizer": str(demo_dir / "tokenizer"),
        },
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"seed": 0, "max_steps": 6, "global_batch_size": 8},
        "checkpoint": {"every_steps": 0},
        "logging": {"every_steps": 1},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def folder(tmp: Path, name: str) -> Path:
    return tmp / "runs" / "t" / name


def metrics(tmp: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder(tmp, name) / "metrics.jsonl").read_text().splitlines()]


def train(config: Path, *overrides: str, procs: int = 1, env: dict | None = None):
    """Run training to the end; asserts success."""
    args = [*TORCHRUN, f"--nproc_per_node={procs}"] if procs > 1 else []
    out = run_cli(*args, "-m", "open_vlm.train", "--config", str(config), *overrides, env={**ENV, **(env or {})})
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything below it, at once (a machine dying, as far as the run can tell)."""
    for victim in [pid, *descendants(pid)]:
        try:
            os.kill(victim, 9)
        except ProcessLookupError:
            pass


def train_until_killed(config: Path, metrics_path: Path, kill_after: int, *overrides: str, procs: int = 1, env=None):
    """Start training and SIGKILL the whole process group once `kill_after` steps are logged."""
    args = [*TORCHRUN, f"--nproc_per_node={procs}"] if procs > 1 else []
    proc = subprocess.Popen(
        [sys.executable, *args, "-m", "open_vlm.train", "--config", str(config), *overrides],
        cwd=REPO,
        env={**os.environ, **ENV, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= kill_after:
            kill_tree(proc.pid)
            break
        time.sleep(0.02)
    proc.wait()
    return proc.returncode
