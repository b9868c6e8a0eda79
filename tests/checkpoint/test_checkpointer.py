"""Atomic commits, retention, init_from, reset_data, refused config changes, async save, S3."""

import json

import fsspec
import pytest
import s3fs
import torch

from open_vlm.checkpoint.checkpointer import MARKER, Checkpointer, read_meta
from open_vlm.checkpoint.model_io import load_model_from_checkpoint
from tests.conftest import run_cli
from tests.trainer.runs import ENV, folder, metrics, train, write_config


def steps_of(directory: str) -> list[int]:
    return [s for s, _ in Checkpointer(directory).list_complete()]


def crash_in_save(config, step: int):
    """Train with a crash (os._exit) after the shards of `step` are written, before its commit."""
    env = {**ENV, "OPEN_VLM_CRASH_BEFORE_COMMIT": f"step_{step:08d}"}
    return run_cli("-m", "open_vlm.train", "--config", str(config), env=env)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_crash_mid_save_leaves_previous_checkpoint_latest(tmp_path, demo_dir, where, request):
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        ckdir = f"s3://{bucket}/atomic"
    else:
        ckdir = str(tmp_path / "ck")
    config = write_config(
        tmp_path, demo_dir, "atomic", train={"max_steps": 6}, checkpoint={"every_steps": 2, "dir": ckdir}
    )
    out = crash_in_save(config, 4)
    assert out.returncode == 137
    assert steps_of(ckdir) == [2]
    fs, root = fsspec.core.url_to_fs(ckdir)
    if where == "s3":  # the half-written step exists but does not count
        assert fs.exists(f"{root}/step_00000004") and not fs.exists(f"{root}/step_00000004/{MARKER}")
    bundle, _, _ = load_model_from_checkpoint(Checkpointer(ckdir).latest())  # and the previous one loads
    assert sum(p.numel() for p in bundle.model.parameters()) > 0
    out = run_cli("-m", "open_vlm.train", "--config", str(config), env=ENV)  # resume from step 2, finish
    assert out.returncode == 0, out.stderr[-2000:]
    assert "step_00000002 at step 2" in out.stderr
    assert steps_of(ckdir) == [2, 4, 6]
    s3fs.S3FileSystem.clear_instance_cache()


def test_keep_last_prunes_but_never_the_resumed_one(tmp_path, demo_dir):
    ckdir = str(tmp_path / "ck")
    config = write_config(
        tmp_path, demo_dir, "keep", train={"max_steps": 6}, checkpoint={"every_steps": 1, "dir": ckdir, "keep_last": 2}
    )
    train(config)
    assert steps_of(ckdir) == [5, 6]
    assert not list((tmp_path / "ck").glob(".step_*"))  # no staging leftovers
    train(config, "--train.max_steps", "9", "--checkpoint.resume", f"{ckdir}/step_00000005")
    assert steps_of(ckdir) == [5, 8, 9]  # 5 was resumed from: protected


def test_keep_last_on_s3(tmp_path, demo_dir, s3_bucket):
    ckdir = f"s3://{s3_bucket}/keep"
    config = write_config(
        tmp_path,
        demo_dir,
        "keeps3",
        train={"max_steps": 4},
        checkpoint={"every_steps": 1, "dir": ckdir, "keep_last": 1},
    )
    train(config)
    assert steps_of(ckdir) == [4]
    fs, root = fsspec.core.url_to_fs(ckdir)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(root)) == ["step_00000004"]
    s3fs.S3FileSystem.clear_instance_cache()


def test_init_from_loads_weights_only(base_run, demo_dir):
    tmp, _ = base_run
    source = folder(tmp, "base") / "checkpoints" / "step_00000004"
    config = write_config(
        tmp, demo_dir, "init", train={"max_steps": 1, "seed": 7}, checkpoint={"init_from": str(source)}
    )
    out = train(config)
    assert "initialised" in out.stderr and "missing none" in out.stderr
    first = metrics(tmp, "init")[0]
    assert first["step"] == 1 and first["samples_seen"] == 8  # fresh step counter and data
    assert first["lr"] == pytest.approx(3e-3 * 0.5)  # fresh scheduler: warmup step 1 of 2
    # The starting weights were the source's: the fresh run's first loss beats a random init's by far.
    scratch = write_config(tmp, demo_dir, "scratch", train={"max_steps": 1, "seed": 7})
    train(scratch)
    assert first["loss"] < metrics(tmp, "scratch")[0]["loss"] - 0.5


def test_reset_data_keeps_weights_restarts_data(base_run):
    tmp, config = base_run
    ckpt = str(folder(tmp, "base") / "checkpoints" / "step_00000002")
    out = train(
        config,
        "--train.max_steps",
        "3",
        "--checkpoint.resume",
        ckpt,
        "--checkpoint.reset_data",
        "true",
        "--checkpoint.dir",
        str(tmp / "reset_ck"),
    )
    assert "reset_data" in out.stderr
    state = json.loads((tmp / "reset_ck" / "step_00000003" / "data.json").read_text())
    assert state["step"] == 1 and state["positions"] == [8]  # one step into a restarted order
    assert read_meta(str(tmp / "reset_ck" / "step_00000003"))["samples_seen"] == 24  # counters continue


@pytest.mark.parametrize(
    "override, key", [(("--train.seed", "5"), "train.seed"), (("--data.num_streams", "4"), "data.num_streams")]
)
def test_config_change_refused_unless_allowed(base_run, override, key):
    tmp, config = base_run
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--train.max_steps", "5", *override, env=ENV)
    assert out.returncode == 2
    assert key in out.stderr and "allow_config_change" in out.stderr
    out = run_cli(
        "-m",
        "open_vlm.train",
        "--config",
        str(config),
        "--train.max_steps",
        "5",
        *override,
        "--checkpoint.allow_config_change",
        "true",
        "--checkpoint.dir",
        str(tmp / f"allowed_{key}"),
        "--checkpoint.resume",
        str(folder(tmp, "base") / "checkpoints" / "step_00000004"),
        env=ENV,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_async_save_matches_sync(tmp_path, demo_dir):
    sync = write_config(tmp_path, demo_dir, "sync", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    train(sync)
    asyn = write_config(tmp_path, demo_dir, "async", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    train(asyn, "--checkpoint.async", "true")
    a = load_model_from_checkpoint(str(folder(tmp_path, "sync")))[0].model.state_dict()
    b = load_model_from_checkpoint(str(folder(tmp_path, "async")))[0].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert steps_of(str(folder(tmp_path, "async") / "checkpoints")) == [2, 4]
    meta = read_meta(str(folder(tmp_path, "async") / "checkpoints" / "step_00000004"))
    assert meta["step"] == 4 and meta["samples_seen"] == 32 and meta["consumed"]
