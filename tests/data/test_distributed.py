"""Real torchrun, 2 processes, gloo: ranks get disjoint samples that cover the data; bad-sample counts are summed."""

import json
import os

import pytest

from tests.conftest import REPO, run_cli
from tests.data.shardgen import write_shards


@pytest.mark.slow
def test_torchrun_ranks_disjoint_and_covering(tmp_path):
    write_shards(tmp_path / "shards", "d", 4, 8)  # 32 samples = 4 steps of 8
    (tmp_path / "shards" / "d-00003.tar").unlink()  # listed in the manifest, gone: its 8 positions are holes
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
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == 6 * 2  # same steps, full micro-batches
    assert all(rows == 2 for r in ranks for rows in r["rows"])
    for epoch in (0, 1):  # 48 positions: epoch 0 whole, epoch 1 half
        got = [[k for k, e in r["keys"] if e == epoch] for r in ranks]
        assert not set(got[0]) & set(got[1])
        assert len(got[0]) == len(set(got[0])) and len(got[1]) == len(set(got[1]))
    epoch0 = {k for r in ranks for k, e in r["keys"] if e == 0}
    assert epoch0 == {f"d_{s:03d}_{i:04d}" for s in range(3) for i in range(8)}
    assert ranks[0]["state"] == ranks[1]["state"]  # every rank holds the same state, counts summed
    assert ranks[0]["state"]["positions"] == [48]
    holes = sum(1 for r in ranks for _ in r["holes"])
    assert holes >= 8 and ranks[0]["state"]["bad_samples"] == {"missing_shard": holes}
