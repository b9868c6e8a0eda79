"""Drills: the S3 endpoint frozen mid-run (during shard reads and during a checkpoint save), and a checkpoint disk
that fills up. Nothing is lost: the runs end as the uninterrupted one did, bit for bit."""

import random

import pytest
import s3fs

from tests.drills.harness import Job, checkpoints_verify, compare
from tests.drills.outages import disk_full, rank_bytes, s3_freezes
from tests.drills.setup import drill_sources

FREEZE_S = 20.0  # longer than one request (1 s) and than s3fs's own retries (about 15 s at these timeouts)


@pytest.mark.slow
def test_s3_frozen_during_reads_and_a_save(reference, tmp_path, drill_dir, moto, monkeypatch):
    """The run retries (a shard open, a checkpoint query or write) and carries on; every committed checkpoint
    verifies; losses, consumed records and the final weights equal the local reference's.

    Shown to fail on a broken build: with `open_url` raising the storage error after its retries (as it did before
    this drill: the loader then made the shard a `missing_shard` hole), the samples of that shard were lost and the
    losses from step 14 on differed."""
    bucket = moto.bucket_with(drill_dir)
    sections = {"data": {"sources": drill_sources(bucket)}, "checkpoint": {"dir": f"{bucket}/ckpt", "every_steps": 16}}
    job = Job(tmp_path, drill_dir, "s3", sections, env=moto.env)
    rng = random.Random(7)
    outcomes = s3_freezes(job, moto, [("reads", rng.randint(9, 11)), ("save", 16)], FREEZE_S, rng)
    for key, value in moto.env.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        lost = compare(reference, job) + checkpoints_verify(job)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert all(o.ok for o in outcomes) and not lost, [o.line() for o in outcomes] + lost


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(reference, tmp_path, drill_dir):
    """Saves fail with ENOSPC after two good ones: the run stops with one clear line (exit 1), the previous
    checkpoint stays the latest and verifies; with space again the run resumes from it and ends as the reference.

    Shown to fail on a broken build: with the ENOSPC hint removed from the checkpoint error, the fault fails (no
    "the disk is full" line); with the remote commit writing COMPLETE before the shards, the partial step was
    taken as the latest and the resume failed."""
    job = Job(tmp_path, drill_dir, "diskfull", {"checkpoint": {"dir": f"diskfull://{tmp_path}/ckpt"}})
    outcomes = disk_full(job, int(2.5 * max(rank_bytes(reference))))  # the third save fails
    lost = compare(reference, job) + checkpoints_verify(job)
    assert all(o.ok for o in outcomes) and not lost, [o.line() for o in outcomes] + lost
