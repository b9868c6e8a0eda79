"""A tiny end-to-end run: train from demo shards, checkpoint, resume exactly, view, generate."""

import json

import pytest

from tests.conftest import REPO, run_cli
from tests.trainer import runs

METRIC_FIELDS = {
    "step",
    "loss",
    "lr",
    "grad_norm",
    "samples_seen",
    "tokens_per_sec_per_device",
    "samples_per_sec_per_device",
}


def write_config(tmp_path, demo_dir, name):
    """16 steps of 4 samples, a checkpoint every 4 steps."""
    return runs.write_config(
        tmp_path,
        demo_dir,
        name,
        data={"batch_size": 4},
        train={"max_steps": 16, "global_batch_size": 4},
        checkpoint={"every_steps": 4},
    )


def read_metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir):
    tmp = tmp_path_factory.mktemp("train")
    config = write_config(tmp, demo_dir, "full")
    out = run_cli("-m", "open_vlm.cli", "train", "--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, tmp / "runs" / "t" / "full"


def test_run_folder_contents(trained):
    _, folder = trained
    assert (folder / "config.yaml").exists()
    assert list(folder.glob("t-train-*.log"))
    metrics = read_metrics(folder / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 17))
    assert METRIC_FIELDS <= set(metrics[0])
    assert metrics[-1]["samples_seen"] == 16 * 4
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < 0.7 * first, (first, last)


def test_view_checkpoint_json(trained):
    _, folder = trained
    out = run_cli("-m", "open_vlm.cli", "view", str(folder / "checkpoints" / "step_00000016"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["step"] == 16 and info["samples_seen"] == 64
    consumed = info["consumed"]
    assert consumed and all({"url", "samples_read", "complete"} <= set(c) for c in consumed)
    assert sum(c["samples_read"] for c in consumed) == 64  # 16 steps x 4 samples, no bad data
    out = run_cli("-m", "open_vlm.cli", "view", str(folder))
    assert "step_00000016" in out.stdout


def test_exact_resume(trained, demo_dir):
    """Kill a run (SIGKILL) after step 6, resume from the step-4 checkpoint: steps 5-16 match exactly."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    tmp, folder = trained
    config = write_config(tmp, demo_dir, "resumed")
    resumed_folder = tmp / "runs" / "t" / "resumed"
    metrics_path = resumed_folder / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "open_vlm.cli", "train", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 6:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    # Whatever was saved after step 4 is as if the crash came first.
    for ckpt in (resumed_folder / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > 4:
            shutil.rmtree(ckpt)
    second = run_cli("-m", "open_vlm.cli", "train", "--config", str(config))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "step_00000004" in second.stderr
    full = {m["step"]: m for m in read_metrics(folder / "metrics.jsonl")}
    again = {m["step"]: m for m in read_metrics(metrics_path)}
    assert sorted(again) == list(range(1, 17))
    for step in range(1, 17):
        for key in ("loss", "lr", "grad_norm", "samples_seen", "tokens_seen"):
            assert again[step][key] == full[step][key], (step, key)


def test_generate_prints_text(trained, demo_dir):
    _, folder = trained
    images = sorted(str(p) for p in (demo_dir / "examples").glob("*.jpg"))[:2]
    out = run_cli(
        "-m", "open_vlm.cli", "generate", "--checkpoint", str(folder), "--image", *images, "--max-new-tokens", "8"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    for image, line in zip(images, lines):
        assert line.startswith(image + ": ")
        assert len(line.split(": ", 1)[1].split()) >= 2  # words, not an empty answer


def test_missing_checkpoint_is_a_clear_error(tmp_path, demo_dir):
    image = next((demo_dir / "examples").glob("*.jpg"))
    out = run_cli("-m", "open_vlm.cli", "generate", "--checkpoint", str(tmp_path), "--image", str(image))
    assert out.returncode == 2 and "no complete checkpoint" in out.stderr


def test_unknown_command_names_the_nearest():
    out = run_cli("-m", "open_vlm.cli", "exprt", "x", "y")
    assert out.returncode == 2 and "did you mean 'export'" in out.stderr
