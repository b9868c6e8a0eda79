"""Helpers to write tiny run configs and run them (single process or torchrun with 2 gloo ranks)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

from tests.conftest import REPO

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


def write_lxmert_config(tmp: Path, demo_dir: Path, name: str, model: dict | None = None, **sections) -> Path:
    """A tiny LXMERT run on a region-feature shard (written under `tmp`) with the word tokenizer."""
    from tests.evaluation.test_eval import write_region_shard
    from tests.tokenize.conftest import make_word_tokenizer

    make_word_tokenizer().save_pretrained(tmp / "word_tokenizer")
    write_region_shard(tmp / "regions-0.tar", n=16, k=5)
    source = {"name": "regions", "urls": [str(tmp / "regions-0.tar")], "modality": "region_features"}
    lxmert = {
        "kind": "lxmert",
        "config": str(REPO / "configs/models/lxmert_tiny.yaml"),
        "tokenizer": str(tmp / "word_tokenizer"),
    }
    return write_config(
        tmp,
        demo_dir,
        name,
        data={"sources": [source], "num_streams": 1, "max_text_len": 12},
        model={**lxmert, **(model or {})},
        **{"train": {"loss": "lxmert", "max_steps": 1}, **sections},
    )


def folder(tmp: Path, name: str) -> Path:
    return tmp / "runs" / "t" / name


def metrics(tmp: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder(tmp, name) / "metrics.jsonl").read_text().splitlines()]


def train(config: Path, *overrides: str, procs: int = 1, env: dict | None = None, timeout: float = 600):
    """Run training to the end; asserts success. A run that hangs is killed, whole tree, at `timeout`."""
    status, err = finish(start(config, *overrides, procs=procs, env=env), timeout=timeout)
    assert status == 0, f"exit status {status}\n{err[-4000:]}"
    return subprocess.CompletedProcess([str(config), *overrides], status, "", err)


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


def start(config: Path, *overrides: str, procs: int = 1, env: dict | None = None) -> subprocess.Popen:
    """Start training in a session of its own (so the whole tree can be signalled or killed).

    Its stderr goes to a file (a pipe nobody reads would fill and stall the run); `finish` returns it.
    """
    args = [*TORCHRUN, f"--nproc_per_node={procs}"] if procs > 1 else []
    stderr = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, *args, "-m", "open_vlm.train", "--config", str(config), *overrides],
        cwd=REPO,
        env={**os.environ, **ENV, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )
    proc.stderr_file = stderr
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int | None, str]:
    """(exit status, stderr) of a started run; a run still going after `timeout` is killed (status None)."""
    try:
        proc.wait(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        status = None
    proc.stderr_file.seek(0)
    err = proc.stderr_file.read()
    proc.stderr_file.close()
    return status, err


def logged_steps(metrics_path: Path) -> int:
    return len(metrics_path.read_text().splitlines()) if metrics_path.exists() else 0


def wait_for_steps(proc: subprocess.Popen, metrics_path: Path, steps: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and logged_steps(metrics_path) < steps:
        time.sleep(0.02)


def wait_for_log(proc: subprocess.Popen, text: str, timeout: float = 240) -> None:
    """Wait until a started run's stderr contains `text` (or it ended, or `timeout` passed)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        proc.stderr_file.seek(0)
        if text in proc.stderr_file.read():
            return
        time.sleep(0.2)


def train_until_killed(config: Path, metrics_path: Path, kill_after: int, *overrides: str, procs: int = 1, env=None):
    """Start training and SIGKILL the whole process group once `kill_after` steps are logged."""
    proc = start(config, *overrides, procs=procs, env=env)
    wait_for_steps(proc, metrics_path, kill_after)
    kill_tree(proc.pid)
    return finish(proc)[0]


def varied_demo(demo_dir: Path, out: Path) -> Path:
    """A copy of the demo shards where odd samples have a short caption and every 8th image is not an image.

    Ranks then see different token counts per sample, and bad samples are counted: what the per-device
    throughput and `bad_samples` metrics must sum over all ranks to get right.
    """
    shutil.copytree(demo_dir, out)
    for shard in sorted(out.glob("demo-*.tar")):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(shard, "w") as tar:
            for member, content in members:
                key, ext = member.name.rsplit(".", 1)
                index = int(key.rsplit("_", 1)[1])
                if ext == "txt" and index % 2:
                    content = b"a red circle"
                if ext == "jpg" and index % 8 == 3:
                    content = b"not a jpeg"
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
    return out
