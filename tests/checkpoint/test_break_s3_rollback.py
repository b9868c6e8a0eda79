"""Break: a rollback (or a fresh start) in an S3 checkpoint dir that holds later checkpoints."""

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
    # today: exit 1, "error: FileNotFoundError: ... <bucket>/roll/step_00000004/COMPLETE" (a *local* path)
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
