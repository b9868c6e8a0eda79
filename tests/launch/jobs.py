"""Runs of a tiny training job as SageMaker starts it, for the entry's and the lifeline's tests: the node command
as PID 1 of a PID namespace, the ranks torchrun starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from launch.sagemaker_entry import children
from tests.conftest import REPO

ENV = {
    "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    "PYTHONPATH": str(REPO),
    "OMP_NUM_THREADS": "1",
}


def local_config(demo_dir: Path, tmp: Path, max_steps: int = 100000) -> Path:
    """A tiny run on the local demo shards, training far longer than any test waits."""
    cfg = {
        "run": {"project": "t", "name": "x", "output_dir": str(tmp / "runs")},
        "data": {
            "sources": [{"name": "shapes", "urls": [str(demo_dir / "demo-{000000..000003}.tar")]}],
            "batch_size": 2,
            "max_text_len": 16,
            "num_streams": 8,
            "num_workers": 1,
        },
        "model": {
            "kind": "paligemma",
            "config": "configs/models/paligemma_tiny.yaml",
            "tokenizer": str(demo_dir / "tokenizer"),
        },
        "train": {"max_steps": max_steps, "strategy": "fsdp"},  # fsdp: runs at a world of 1 (ddp does not)
        "checkpoint": {"dir": str(tmp / "ck"), "every_minutes": 30, "resume": "latest"},
        "logging": {"every_steps": 1},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_container(config: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    """The job's node command (what sm_train.sh execs) as PID 1 of a PID namespace, with /opt/ml bound to tmp."""
    opt_ml = tmp / "opt_ml"
    (opt_ml / "output/data").mkdir(parents=True)
    mounts = 'mount -t tmpfs tmpfs /opt && mkdir /opt/ml && mount --bind "$0" /opt/ml && exec "$@"'
    node = f"exec python3 -m launch.sagemaker_entry --nnodes 1 --nproc_per_node 1 -m open_vlm.train --config {config}"
    log = (tmp / "container.log").open("w")
    container = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", mounts, str(opt_ml), "/bin/bash", "-c", node],
        cwd=REPO,
        env={**job_env(tmp), "OPEN_VLM_CACHE": str(tmp / "cache")},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return container, opt_ml


def ranks(parent: int) -> list[int]:
    """`parent`'s children that run open_vlm.train (torchrun also starts short-lived helpers)."""
    found = []
    for pid in children(parent):
        try:
            if "open_vlm.train" in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(pid)
        except OSError:
            pass
    return found


def wait_for(predicate, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def torchrun_argv(config: Path) -> list[str]:
    """One rank of `open_vlm.train` under torchrun, as a 1-GPU node runs it."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *train_argv(config)]


def entry_argv(config: Path) -> list[str]:
    """The node command without its `exec`: the entry, running torchrun for one rank."""
    return [
        sys.executable,
        "-m",
        "launch.sagemaker_entry",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "1",
        *train_argv(config),
    ]


def train_argv(config: Path) -> list[str]:
    return ["-m", "open_vlm.train", "--config", str(config)]


def job_env(tmp: Path) -> dict[str, str]:
    """The job's environment: this one, the repository on the path, user settings of its own."""
    return {**os.environ, **ENV, "XDG_CONFIG_HOME": str(tmp / "xdg")}


def start_node(argv: list[str], tmp: Path) -> subprocess.Popen:
    """`argv` in a session of its own (so that a test can kill its whole tree), output discarded."""
    return subprocess.Popen(
        argv, cwd=REPO, env=job_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
