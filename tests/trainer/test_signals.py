"""Graceful stops: how long the launcher waits between a stop signal and SIGKILL, and the warning about it."""

import os
import signal
import subprocess
import sys

import pytest

from open_vlm.trainer.signals import TORCHRUN_DEFAULT_GRACE, launcher_grace, stop_grace
from tests.trainer.runs import finish, folder, kill_tree, start, wait_for_steps, write_config


@pytest.mark.parametrize(
    ("flag", "expected"), [(["--shutdown-timeout", "45"], 45.0), (["--shutdown_timeout=12"], 12.0)]
)
def test_the_launcher_grace_is_read_from_its_command_line(flag, expected):
    """torchrun passes its --shutdown-timeout to no worker: it is read from the agent's command line."""
    code = "import time; print('up', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, "--nnodes", "1", *flag], stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # exec'd: its command line is the new one
        assert launcher_grace(proc.pid) == expected
    finally:
        proc.kill()
        proc.wait()
    assert launcher_grace(os.getpid()) is None  # pytest's own command line names none


def test_the_configured_grace_wins_then_the_environment(monkeypatch):
    monkeypatch.setenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "77")
    assert stop_grace(5.0, under_torchrun=False)[0] == 5.0
    assert stop_grace(0.0, under_torchrun=False)[0] == 77.0
    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT")
    assert stop_grace(0.0, under_torchrun=False)[0] == TORCHRUN_DEFAULT_GRACE


def test_a_stop_close_to_the_configured_grace_warns(tmp_path, demo_dir):
    """A slow final save after SIGTERM, with train.shutdown_timeout 2: the warning names the configured 2 s."""
    config = write_config(tmp_path, demo_dir, "grace", train={"max_steps": 10_000, "shutdown_timeout": 2})
    proc = start(config, env={"OPEN_VLM_CHECKPOINT_FAULT": "rank=0,file=data.json,delay=3"})
    try:
        wait_for_steps(proc, folder(tmp_path, "grace") / "metrics.jsonl", 2)
        os.kill(proc.pid, signal.SIGTERM)
        status, err = finish(proc, timeout=120)
    finally:
        kill_tree(proc.pid)
    assert status == 0, err[-2000:]
    assert "of the 2s grace before SIGKILL" in err, err[-2000:]
