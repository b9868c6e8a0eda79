"""Drill: a job killed (kill -9, the whole tree) at random moments, in sync and async saves, one of its ranks
killed, and stopped by SIGTERM, then resumed each time: it ends as the uninterrupted run did, bit for bit."""

import pytest

from tests.drills.harness import Job, run_faults

# The CI form; `python tools/drill.py kills --kills 20` runs the long one.
CI_FAULTS = ["kill", "kill_sync_save", "kill_async_save", "kill_rank", "sigterm"]


@pytest.mark.slow
def test_kills_sigterm_and_a_dead_rank_lose_nothing(reference, tmp_path, drill_dir):
    """Metrics of every step, the consumed record of every checkpoint and the final weights equal the reference's.

    Shown to fail on broken builds: with the local commit's `os.replace` of the staging folder replaced by writing
    the step folder in place, the kill during the sync save left a step folder without its shards that resume
    took as the latest (the finish failed); with `peer_lost` returning None, the dead-rank fault fails (no
    "lost contact with another rank" line); with the SIGTERM handler not installed, the SIGTERM fault fails
    (no checkpoint at the stop step)."""
    job = Job(tmp_path, drill_dir, "kills")
    result = run_faults(reference, job, CI_FAULTS, seed=15)
    assert result.passed, result.report()
