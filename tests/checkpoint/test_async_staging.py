"""Async saves: the staged copy overlaps the next step, the update waits for it, a crash mid-write commits nothing."""

import time

import pytest
import torch
import torch.nn as nn
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from open_vlm.checkpoint import dcp_io
from open_vlm.checkpoint.checkpointer import MARKER, Checkpointer
from tests.trainer.runs import folder, kill_tree, start, train, wait_for_steps, write_config

STAGING_DELAY_S = 2.0  # long enough that a loaded machine's save() still returns well before the copy starts
SLOW_STAGING = {"OPEN_VLM_CHECKPOINT_FAULT": "file=/staging,delay=2,times=100"}


def model_and_optimizer(module: nn.Module):
    optimizer = torch.optim.AdamW(module.parameters(), lr=0.1)
    module(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return module, optimizer


def save(ckpt: Checkpointer, step: int, model, optimizer) -> str:
    return ckpt.save(
        step, model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={}, async_save=True
    )


def saved(url: str) -> dict:
    return _load_state_dict_from_keys(checkpoint_id=url)


@pytest.fixture
def slow_staging(monkeypatch):
    """The background copy starts 2 s late: anything that changes the state without waiting lands in it."""
    real = dcp_io.maybe_fail_write

    def hook(url: str) -> None:
        if url.endswith("/staging"):
            time.sleep(STAGING_DELAY_S)
        real(url)

    monkeypatch.setattr(dcp_io, "maybe_fail_write", hook)


def test_an_update_after_staged_is_not_in_the_checkpoint(tmp_path, slow_staging):
    model, optimizer = model_and_optimizer(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = Checkpointer(str(tmp_path / "ck"))
    t0 = time.perf_counter()
    url = save(ckpt, 1, model, optimizer)
    assert time.perf_counter() - t0 < STAGING_DELAY_S  # save() did not wait for the copy
    ckpt.staged()  # what the trainer does before the optimizer step
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert ckpt.wait()
    state = saved(url)
    for key, value in before.items():
        assert torch.equal(state["model"][key], value), key


def test_a_model_with_buffers_is_staged_before_save_returns(tmp_path, slow_staging):
    model, optimizer = model_and_optimizer(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)))
    assert dcp_io.has_persistent_buffers(model)
    before = model[1].running_mean.clone()
    ckpt = Checkpointer(str(tmp_path / "ck"))
    url = save(ckpt, 1, model, optimizer)
    model(torch.randn(4, 8))  # a forward changes the running statistics, with no update in between
    assert not torch.equal(model[1].running_mean, before)
    assert ckpt.wait()
    assert torch.equal(saved(url)["model"]["1.running_mean"], before)


def test_trainer_async_checkpoint_equals_sync_with_a_slow_copy(tmp_path, demo_dir):
    """Step 3's update must wait for step 2's staged copy: the async step-2 checkpoint equals the sync one."""
    sync = write_config(tmp_path, demo_dir, "sync", train={"max_steps": 3}, checkpoint={"every_steps": 2})
    asyn = write_config(tmp_path, demo_dir, "async", train={"max_steps": 3}, checkpoint={"every_steps": 2})
    train(sync)
    train(asyn, "--checkpoint.async", "true", env=SLOW_STAGING)
    a = saved(str(folder(tmp_path, "sync") / "checkpoints" / "step_00000002"))
    b = saved(str(folder(tmp_path, "async") / "checkpoints" / "step_00000002"))
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_crash_during_the_background_write_leaves_the_previous_checkpoint_latest(tmp_path, demo_dir):
    ckdir = tmp_path / "ck"
    config = write_config(
        tmp_path, demo_dir, "crash", train={"max_steps": 8}, checkpoint={"every_steps": 2, "dir": str(ckdir)}
    )
    # Step 2's shards are written; step 4's write hangs in the background while training goes on.
    hang = {"OPEN_VLM_CHECKPOINT_FAULT": "file=.distcp,after=1,delay=120"}
    proc = start(config, "--checkpoint.async", "true", env=hang)
    wait_for_steps(proc, folder(tmp_path, "crash") / "metrics.jsonl", 5)
    assert proc.poll() is None, "the run ended before the kill"
    kill_tree(proc.pid)
    proc.wait()
    assert [s for s, _ in Checkpointer(str(ckdir)).list_complete()] == [2]
    assert not (ckdir / "step_00000004" / MARKER).exists()
    out = train(config, "--checkpoint.async", "true")  # resumes from step 2 and finishes
    assert "step_00000002 at step 2" in out.stderr
    assert [s for s, _ in Checkpointer(str(ckdir)).list_complete()] == [2, 4, 6, 8]
