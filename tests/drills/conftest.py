"""Drill fixtures: the drill data, the uninterrupted reference run every drill compares with, an S3 server of
the drills' own (a process they may freeze)."""

from __future__ import annotations

import pytest

from tests.drills.harness import Job, finish_job
from tests.drills.setup import MotoServer, drill_data


@pytest.fixture(scope="session")
def drill_dir(tmp_path_factory, demo_dir):
    """The demo shards as a drill reads them: shards 0-2 plain tars, shard 3 a GNU-tar gzipped tar cut short, no
    manifest (the first run counts the shards and writes it)."""
    return drill_data(demo_dir, tmp_path_factory.mktemp("drill_data"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, drill_dir):
    """The uninterrupted run every drill compares with (24 steps, DDP on 2 ranks, checkpoints every 3 steps)."""
    job = Job(tmp_path_factory.mktemp("reference"), drill_dir, "reference")
    outcome = finish_job(job)
    assert outcome.ok, outcome.line()
    return job


@pytest.fixture(scope="module")
def moto():
    """A moto S3 server of the drills' own: they SIGSTOP it, which must not stall other tests' endpoint."""
    server = MotoServer.start()
    yield server
    server.stop()
