"""Workers exit when their launcher dies: a plain parent killed with -9, and torchrun's agent killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.sagemaker_entry import children
from open_vlm.lifeline import watch_launcher
from tests.conftest import REPO
from tests.launch.jobs import local_config, ranks, start_node, torchrun_argv, wait_for
from tests.trainer.runs import ENV, TORCHRUN, folder, kill_tree, write_config

GONE_WITHIN_S = 30  # generous: the watch wakes at once, but this machine is shared and loaded


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


WORKER = "import time; from open_vlm.lifeline import watch_launcher; watch_launcher(always=True); print('ready', flush=True); time.sleep(300)"
LAUNCHER = (
    "import subprocess, sys, time; "
    f"child = subprocess.Popen([sys.executable, '-c', {WORKER!r}], start_new_session=True); "
    "print(child.pid, flush=True); time.sleep(300)"
)


def test_worker_exits_when_its_launcher_is_killed():
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, **ENV}
    )
    worker = int(launcher.stdout.readline())
    try:
        assert launcher.stdout.readline().strip() == "ready"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert wait_gone([worker], GONE_WITHIN_S) == [], "the worker outlived its launcher"
    finally:
        kill_tree(worker)


def test_worker_exits_when_the_process_it_is_told_to_watch_is_gone():
    """$OPEN_VLM_WATCH_PID (the SageMaker entry, above torchrun): dead before the worker starts watching, or killed
    later, the worker exits; no race with reading the parent's pid."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    keeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    workers = []
    try:
        for watched in (gone.pid, keeper.pid):
            env = {**os.environ, **ENV, "OPEN_VLM_WATCH_PID": str(watched)}
            worker = subprocess.Popen(
                [sys.executable, "-c", WORKER], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
            )
            workers.append(worker.pid)
            if watched == keeper.pid:
                assert worker.stdout.readline().strip() == "ready"
        assert wait_gone(workers[:1], GONE_WITHIN_S) == [], "the worker outlived the watched process"
        assert alive(workers[1])  # its watched process runs
        keeper.kill()
        keeper.wait()
        assert wait_gone(workers[1:], GONE_WITHIN_S) == [], "the worker outlived the watched process"
    finally:
        keeper.kill()
        for pid in workers:
            kill_tree(pid)


def test_a_plain_run_is_not_watched(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert watch_launcher() is None  # `nohup python -m open_vlm.train &` must survive its shell


@pytest.mark.slow
def test_torchrun_workers_exit_when_the_agent_is_killed(demo_dir, tmp_path):
    config = write_config(
        tmp_path, demo_dir, "orphans", train={"max_steps": 100000, "strategy": "ddp", "global_batch_size": 4}
    )
    agent = subprocess.Popen(
        [sys.executable, *TORCHRUN, "--nproc_per_node=2", "-m", "open_vlm.train", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    metrics = folder(tmp_path, "orphans") / "metrics.jsonl"
    workers = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and agent.poll() is None and not metrics.exists():
            time.sleep(0.2)
        assert metrics.exists(), "training never started"
        workers = children(agent.pid)
        assert len(workers) == 2
        os.kill(agent.pid, signal.SIGKILL)  # the agent only: its workers live in sessions of their own
        agent.wait()
        assert wait_gone(workers, GONE_WITHIN_S) == [], "torchrun's workers outlived it"
    finally:
        kill_tree(agent.pid)
        for pid in workers:
            kill_tree(pid)


@pytest.mark.slow
def test_rank_started_just_before_the_agent_dies_exits(demo_dir, tmp_path):
    """A rank whose agent is killed while the rank still imports exits too: it reads its launcher's pid first thing,
    not after `import open_vlm.train`, so it does not watch init instead."""
    config = local_config(demo_dir, tmp_path)
    agent = start_node(torchrun_argv(config), tmp_path)
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
