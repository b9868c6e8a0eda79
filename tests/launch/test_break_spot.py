"""Attempts to break spot safety and the orphan guarantees (issue 21's fixes). A failing test is a defect."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from launch.sagemaker_entry import children
from tests.conftest import REPO
from tests.launch.test_sagemaker_entry import can_unshare
from tests.test_lifeline import alive, wait_gone
from tests.trainer.runs import kill_tree

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
        env={**os.environ, **ENV, "XDG_CONFIG_HOME": str(tmp / "xdg"), "OPEN_VLM_CACHE": str(tmp / "cache")},
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


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs `unshare --pid --mount` (root) to run a command as PID 1")
def test_break_sigterm_while_the_job_starts_fails_the_job(demo_dir, tmp_path):
    """Claim (launch/sagemaker_entry.py): SIGTERM to PID 1 reaches the workers, 'which finish their step,
    checkpoint and exit 0; torchrun then exits 0, and so does this'. A StopTrainingJob / spot notice / max-run
    that lands while the ranks start (imports, model build, process group, data plan, loading the checkpoint
    on a spot restart: everything before Trainer.fit installs the handler, minutes on a big model) kills the
    rank outright: torchrun prints its ChildFailedError report, exits 1, and the entry writes
    /opt/ml/output/failure ('torchrun exited with status 1 ...'), so the job is reported as a failure."""
    container, opt_ml = start_container(local_config(demo_dir, tmp_path), tmp_path)
    try:
        pid1 = wait_for(lambda: (children(container.pid) or [None])[0], 30)
        torchrun = wait_for(lambda: (children(pid1) or [None])[0], 60)
        wait_for(lambda: ranks(torchrun), 120)  # the rank exists: it is starting up
        time.sleep(1.0)
        os.kill(pid1, signal.SIGTERM)
        code = container.wait(timeout=120)
    finally:
        kill_tree(container.pid)
    log = (tmp_path / "container.log").read_text()
    failure = opt_ml / "output/failure"
    assert (code, failure.exists()) == (0, False), (
        f"exit {code}; failure file: {failure.read_text() if failure.exists() else None!r}; log: {log[-1500:]}"
    )


def test_break_stop_time_warning_measures_torchruns_grace_on_sagemaker(monkeypatch, caplog):
    """Claim (README): on SageMaker the stop must fit SageMaker's 120 s before SIGKILL; the entry signals the
    ranks itself, torchrun never does. The trainer still warns against torchrun's 30 s grace and tells the user
    to 'raise torchrun --shutdown-timeout', which nothing on SageMaker reads: a 40 s stop (fine) is reported as
    a problem, with advice that cannot help."""
    from open_vlm.trainer.loop import Trainer

    monkeypatch.setenv("SM_CURRENT_HOST", "algo-1")  # inside a SageMaker job (sm_train.sh's environment)
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)
    stop = types.SimpleNamespace(at=time.monotonic() - 40, reason="SIGTERM")
    with caplog.at_level(logging.WARNING, logger="open_vlm.trainer.loop"):
        Trainer._report_stop_time(None, stop)
    assert not [r for r in caplog.records if "shutdown-timeout" in r.getMessage()], caplog.text


@pytest.mark.slow
def test_break_rank_started_just_before_the_agent_dies_is_not_watched(demo_dir, tmp_path):
    """Claim (open_vlm/lifeline.py, README 'Orphans'): under torchrun each rank exits as soon as its launcher
    dies. watch_launcher() reads os.getppid() only after `import open_vlm.train` (~0.7 s here): an agent
    killed in that window leaves the rank re-parented, and it then watches the new parent (init, a subreaper)
    forever. With one rank there is no process group to fail: it trains on as an orphan (here: still running,
    parent 1, long after the agent died)."""
    config = local_config(demo_dir, tmp_path)
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "open_vlm.train",
            "--config",
            str(config),
        ],
        cwd=REPO,
        env={**os.environ, **ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    workers = []
    try:
        workers = wait_for(lambda: ranks(agent.pid), 120)
        os.kill(agent.pid, signal.SIGKILL)  # the rank is still importing
        agent.wait()
        survivors = wait_gone(workers, 30)
        assert survivors == [], f"rank(s) {survivors} outlived the agent by 30 s"
    finally:
        kill_tree(agent.pid)
        for pid in workers:
            kill_tree(pid)


@pytest.mark.slow
def test_break_entry_killed_outside_pid_1_leaves_torchrun_and_its_ranks(demo_dir, tmp_path):
    """Claim (issue 21 'Deliver'): workers exit when their launcher dies, in any launch mode. As PID 1 (SageMaker)
    the entry's death ends the PID namespace, so that mode holds. Anywhere else (`docker run --init`, tini,
    running the image's command by hand to test it) torchrun has no watch on the entry: kill -9 the entry and
    torchrun and its ranks train on, with nobody left to pass SIGTERM to them."""
    config = local_config(demo_dir, tmp_path)
    entry = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch.sagemaker_entry",
            "--nnodes",
            "1",
            "--nproc_per_node",
            "1",
            "-m",
            "open_vlm.train",
            "--config",
            str(config),
        ],
        cwd=REPO,
        env={**os.environ, **ENV, "XDG_CONFIG_HOME": str(tmp_path / "xdg")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    torchrun, workers = None, []
    try:
        torchrun = wait_for(lambda: (children(entry.pid) or [None])[0], 60)
        workers = wait_for(lambda: ranks(torchrun), 120)
        os.kill(entry.pid, signal.SIGKILL)
        entry.wait()
        wait_gone([torchrun, *workers], 30)
        survivors = {"torchrun": alive(torchrun), "ranks": [alive(pid) for pid in workers]}
        assert survivors == {"torchrun": False, "ranks": [False]}, f"alive 30 s after the entry died: {survivors}"
    finally:
        for pid in [entry.pid, torchrun, *workers]:
            if pid:
                kill_tree(pid)
