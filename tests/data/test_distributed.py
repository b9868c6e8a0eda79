"""Real torchrun, 2 processes, gloo: ranks get disjoint samples that cover the data; state is gathered."""

import json
import os

import pytest

from tests.conftest import REPO, run_cli
from tests.data.shardgen import write_shards


@pytest.mark.slow
def test_torchrun_ranks_disjoint_and_covering(tmp_path):
    write_shards(tmp_path / "shards", "d", 3, 8)  # 24 samples = 3 steps of 8
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / "tests/data/dist_loader_main.py"),
        str(tmp_path / "shards"),
        str(out),
        "6",
        env={"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(ranks[0]["keys"]) == len(ranks[1]["keys"]) == 4 * 6  # same number of steps and samples
    # Streams end their epochs at slightly different times; within epoch 0 every sample comes once.
    epoch0 = [[k for k, e in r["keys"] if e == 0] for r in ranks]
    assert not set(epoch0[0]) & set(epoch0[1])
    assert len(epoch0[0]) == len(set(epoch0[0])) and len(epoch0[1]) == len(set(epoch0[1]))
    assert set(epoch0[0]) | set(epoch0[1]) == {f"d_{s:03d}_{i:04d}" for s in range(3) for i in range(8)}
    assert ranks[0]["state"] == ranks[1]["state"]  # every rank holds the same, merged state
    assert ranks[0]["state"]["positions"] == [48]
    assert min(row[1] for row in ranks[0]["state"]["streams"][0]) >= 1  # all streams are past epoch 0
