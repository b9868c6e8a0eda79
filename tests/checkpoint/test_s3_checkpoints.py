"""S3 checkpoint dirs: a rollback (or a fresh start) where later checkpoints exist, and failed saves swept."""

import fsspec
import s3fs

from open_vlm.checkpoint.checkpointer import Checkpointer
from tests.conftest import run_cli
from tests.trainer.runs import ENV, train, write_config


def test_resuming_an_older_step_on_s3_rolls_back(tmp_path, demo_dir, s3_bucket):
    """README: resuming an older step moves the later ones to `abandoned/`; on S3 the run must start too."""
    ckdir = f"s3://{s3_bucket}/roll"
    config = write_config(
        tmp_path, demo_dir, "rolls3", train={"max_steps": 4}, checkpoint={"every_steps": 2, "dir": ckdir}
    )
    train(config)
    assert [s for s, _ in Checkpointer(ckdir).list_complete()] == [2, 4]
    out = run_cli(
        "-m",
        "open_vlm.train",
        "--config",
        str(config),
        "--train.max_steps",
        "3",
        "--checkpoint.resume",
        f"{ckdir}/step_00000002",
        env=ENV,
    )
    s3fs.S3FileSystem.clear_instance_cache()
    # before the fix: exit 1, the marker read at a *local* path, then s3fs copying folder placeholders
    assert out.returncode == 0, out.stderr[-1500:]
    assert [s for s, _ in Checkpointer(ckdir).list_complete()] == [2, 3]
    fs, root = fsspec.core.url_to_fs(ckdir)
    assert fs.exists(f"{root}/abandoned")
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_fresh_start_in_an_s3_folder_with_checkpoints(tmp_path, demo_dir, s3_bucket):
    """`checkpoint.resume none` where checkpoints exist sets them aside (README) instead of failing."""
    ckdir = f"s3://{s3_bucket}/fresh"
    config = write_config(tmp_path, demo_dir, "fresh3", train={"max_steps": 2}, checkpoint={"dir": ckdir})
    train(config)
    out = run_cli("-m", "open_vlm.train", "--config", str(config), "--checkpoint.resume", "none", env=ENV)
    s3fs.S3FileSystem.clear_instance_cache()
    assert out.returncode == 0, out.stderr[-1500:]


def test_a_failed_save_on_s3_leaves_no_shards_behind(s3_bucket, monkeypatch):
    """Local failed/killed saves are staged and swept by `prune`; on S3 they are written in place and only
    removed if the same step is saved again: every failed (or killed) save's shards stay in the bucket."""
    import pytest
    import torch

    from open_vlm.checkpoint import faults
    from open_vlm.checkpoint.checkpointer import CheckpointError

    monkeypatch.setenv("OPEN_VLM_CHECKPOINT_FAULT", "rank=0,file=.distcp,times=3")
    monkeypatch.setattr("open_vlm.checkpoint.checkpointer.RETRY_DELAY", 0.01)
    faults._faults.cache_clear()
    faults._hits.clear()
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    ckdir = f"s3://{s3_bucket}/leak"
    checkpointer = Checkpointer(ckdir, keep_last=1)
    kwargs = dict(model=model, optimizer=optimizer, extra={}, rng={}, data_state={}, meta={}, files={})
    with pytest.raises(CheckpointError):
        checkpointer.save(1, **kwargs)
    checkpointer.save(2, **kwargs)
    checkpointer.save(3, **kwargs)
    faults._faults.cache_clear()
    fs, root = fsspec.core.url_to_fs(ckdir)
    fs.invalidate_cache()
    left = sorted(p.rsplit("/", 1)[1] for p in fs.ls(root))
    s3fs.S3FileSystem.clear_instance_cache()
    assert left == ["step_00000003"], left
