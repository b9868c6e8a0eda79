"""A small trained run whose checkpoints several checkpoint tests read (never write)."""

import pytest

from tests.trainer.runs import train, write_config


@pytest.fixture(scope="session")
def base_run(tmp_path_factory, demo_dir):
    """(folder, config) of 4 steps with checkpoints at 2 and 4."""
    tmp = tmp_path_factory.mktemp("base")
    config = write_config(tmp, demo_dir, "base", train={"max_steps": 4}, checkpoint={"every_steps": 2})
    train(config)
    return tmp, config
