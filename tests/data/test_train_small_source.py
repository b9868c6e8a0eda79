"""The review's hang, end to end: 2 torchrun ranks on shards of [200, 5] samples with the default 64 streams."""

import pytest

from tests.checkpoint.test_resume import kill_and_resume
from tests.data.shardgen import write_shards


@pytest.mark.slow
def test_two_ranks_train_and_resume_exactly_on_a_small_uneven_source(tmp_path, demo_dir):
    write_shards(tmp_path / "small", "s", 2, [200, 5], size=32)
    data = {
        "sources": [{"name": "small", "urls": [str(tmp_path / "small" / "s-{00000..00001}.tar")], "weight": 1.0}],
        "num_streams": 64,  # the default: more streams than this source has shard pieces
        "num_workers": 1,
    }
    kill_and_resume(tmp_path, demo_dir, "small", str(tmp_path / "ckpt"), data=data, train={"strategy": "ddp"})
