"""Saving under real torchrun (2 gloo ranks): async saves, storage errors that all ranks retry together,
SIGTERM delivered by torchrun with loader workers running, and exact resume with dropout on."""

import json
import os
import signal

import pytest
import torch
import yaml

from open_vlm.checkpoint.checkpointer import Checkpointer, read_meta, torch_load
from open_vlm.checkpoint.model_io import load_model_from_checkpoint
from tests.conftest import REPO
from tests.trainer.runs import (
    finish,
    folder,
    metrics,
    start,
    train,
    varied_demo,
    wait_for_steps,
    write_config,
)

EXACT_KEYS = ("loss", "lr", "grad_norm", "samples_seen", "tokens_seen")


def committed(tmp, name) -> list[int]:
    return [step for step, _ in Checkpointer(str(folder(tmp, name) / "checkpoints")).list_complete()]


def assert_same_metrics(reference: list[dict], other: list[dict], steps) -> None:
    ref, got = {m["step"]: m for m in reference}, {m["step"]: m for m in other}
    for step in steps:
        for key in EXACT_KEYS:
            assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])


def assert_same_final_state(tmp, a: str, b: str, step: int) -> None:
    """The checkpoints of step `step` hold the same weights (bit for bit) and the same per-rank RNG states."""
    ckpt_a, ckpt_b = (folder(tmp, n) / "checkpoints" / f"step_{step:08d}" for n in (a, b))
    wa = load_model_from_checkpoint(str(ckpt_a))[0].model.state_dict()
    wb = load_model_from_checkpoint(str(ckpt_b))[0].model.state_dict()
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    for rank in (0, 1):
        ra, rb = (torch_load(f"{c}/rng/rank_{rank:05d}.pt") for c in (ckpt_a, ckpt_b))
        assert torch.equal(ra["torch"], rb["torch"]), f"rank {rank} torch RNG"


# --- FSDP2, dropout on, one loader worker per rank -------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, demo_dir):
    """(folder, sections) of an uninterrupted FSDP run with dropout, sync saves every 4 steps."""
    tmp = tmp_path_factory.mktemp("fsdp_saves")
    spec = yaml.safe_load((REPO / "configs/models/paligemma_tiny.yaml").read_text())
    spec["vision"]["attention_dropout"] = spec["text"]["attention_dropout"] = 0.1
    (tmp / "dropout.yaml").write_text(yaml.safe_dump(spec))
    sections = {
        "train": {"strategy": "fsdp", "max_steps": 16},
        "data": {"num_workers": 1},
        "model": {"config": str(tmp / "dropout.yaml")},
        "checkpoint": {"every_steps": 4},
    }
    train(write_config(tmp, demo_dir, "reference", **sections), procs=2)
    return tmp, sections


@pytest.mark.slow
def test_sigterm_from_torchrun_with_workers_saves_and_resumes_exactly(fsdp, demo_dir):
    """torchrun signals each rank's process group, workers too: the ranks still save; resuming is exact."""
    tmp, sections = fsdp
    config = write_config(tmp, demo_dir, "term", **sections)
    proc = start(config, procs=2)
    wait_for_steps(proc, folder(tmp, "term") / "metrics.jsonl", 3)
    os.kill(proc.pid, signal.SIGTERM)  # to torchrun only, as a scheduler would; it forwards the signal
    _, err = finish(proc, timeout=120)  # torchrun itself then exits 1 (see the README)
    assert "after SIGTERM" in err and "killed by signal" not in err, err[-3000:]
    stopped = metrics(tmp, "term")[-1]["step"]
    assert 3 <= stopped < 16 and committed(tmp, "term")[-1] == stopped

    out = train(config, procs=2)
    assert f"step_{stopped:08d} at step {stopped}" in out.stderr
    assert_same_metrics(metrics(tmp, "reference"), metrics(tmp, "term"), range(1, 17))
    assert_same_final_state(tmp, "reference", "term", 16)


@pytest.mark.slow
def test_async_saves_every_step_under_fsdp_train_as_sync(fsdp, demo_dir):
    tmp, sections = fsdp
    config = write_config(tmp, demo_dir, "async", **{**sections, "checkpoint": {"every_steps": 1, "async_save": True}})
    train(config, procs=2, timeout=300)  # a deadlock is killed at the timeout
    assert_same_metrics(metrics(tmp, "reference"), metrics(tmp, "async"), range(1, 17))
    assert committed(tmp, "async") == list(range(1, 17))
    assert_same_final_state(tmp, "reference", "async", 16)


# --- DDP, storage faults, per-device metrics -----------------------------------------------------------
DDP = {"train": {"strategy": "ddp", "max_steps": 8}, "logging": {"every_steps": 2}}
SLOW_SAVE = 6.0  # seconds the first data.json write takes in the faulty run


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, demo_dir):
    """A DDP run (varied captions, bad samples) whose first save meets a slow write and two failed ones."""
    tmp = tmp_path_factory.mktemp("ddp_saves")
    data = varied_demo(demo_dir, tmp / "varied")
    faults = f"rank=0,file=data.json,delay={SLOW_SAVE};rank=0,file=meta.json,times=1;rank=1,file=.distcp,times=1"
    config = write_config(tmp, data, "faulty", **DDP, checkpoint={"every_steps": 2})
    out = train(config, procs=2, env={"OPEN_VLM_CHECKPOINT_FAULT": faults}, timeout=300)
    return tmp, data, out.stderr


@pytest.mark.slow
def test_storage_errors_on_one_rank_are_retried_by_all(ddp):
    """A failed meta.json on rank 0 and a failed DCP shard on rank 1: every rank retries, the run goes on."""
    tmp, _, err = ddp
    assert err.count("all ranks retry") >= 4, err[-3000:]  # two phases, reported by both ranks
    assert committed(tmp, "faulty") == [2, 4, 6, 8]


@pytest.mark.slow
def test_metrics_are_per_step_per_device_and_leave_saves_out(ddp):
    tmp, _, _ = ddp
    records = metrics(tmp, "faulty")
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    previous = {"samples_seen": 0, "tokens_seen": 0}
    for r in records:
        # per device and per step: 8 samples a step over 2 ranks
        assert r["samples_per_sec_per_device"] * r["step_time_sec"] == pytest.approx(4.0)
        # tokens per sample of the whole global batch, not of rank 0's share
        tokens, samples = (r[k] - previous[k] for k in ("tokens_seen", "samples_seen"))
        assert r["tokens_per_sec_per_device"] / r["samples_per_sec_per_device"] == pytest.approx(tokens / samples)
        assert r["data_wait_sec"] <= r["step_time_sec"]
        previous = r
    # the save after step 2 took more than SLOW_SAVE seconds; steps 3-4 are timed without it
    assert records[1]["step_time_sec"] < SLOW_SAVE / 2
    # bad samples counted on both ranks, as the checkpoint's merged count says
    saved = read_meta(str(folder(tmp, "faulty") / "checkpoints" / "step_00000008"))["bad_samples"]
    assert records[-1]["bad_samples"] == sum(saved.values()) > 0


@pytest.mark.slow
def test_async_ddp_matches_sync_and_a_failing_store_stops_all_ranks(ddp):
    """Async saves every step train as the sync run; when shard writes keep failing on rank 1, the async
    failure is reported, the next save is synchronous, and after its retries every rank exits 1."""
    tmp, data, _ = ddp
    config = write_config(tmp, data, "async", **DDP, checkpoint={"every_steps": 1, "async_save": True})
    proc = start(config, procs=2, env={"OPEN_VLM_CHECKPOINT_FAULT": "rank=1,file=.distcp,after=4,times=99"})
    status, err = finish(proc, timeout=300)
    assert status == 1, err[-3000:]
    assert "async checkpoint of step 5 failed" in err
    assert "writing the shards of step_00000006 failed 3 times" in err
    assert committed(tmp, "async") == [1, 2, 3, 4]  # the last good one stays the latest
    assert_same_metrics(metrics(tmp, "faulty"), metrics(tmp, "async"), [2, 4, 6])
    ckpt = folder(tmp, "async") / "checkpoints" / "step_00000004"
    assert json.loads((ckpt / "COMPLETE").read_text())["step"] == 4
