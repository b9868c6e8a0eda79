"""Regression test (a review found this, now fixed): one missing shard stops the run when a rank reads a single stream (R >= P, e.g. 64 GPUs, default P=64).

Claim 4: "a source whose last 1000 samples are all bad stops with a clear error". The check counts consecutive
bad samples per *rank* (loader.py `_account`, `_bad_run[src]`). A rank that owns one stream reads one contiguous
layout range, so one missing shard of >= 1000 samples is 1000 consecutive bad samples *for that rank* while
the source as a whole is 75% good here: that rank raises ("the last 1000 samples were all bad", untrue) and the
run dies, although the claim says it should skip the shard and go on.
"""

import os

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards


def test_one_missing_shard_does_not_stop_a_run_whose_ranks_read_one_stream_each(tmp_path):
    urls = write_text_shards(tmp_path, "t", [1100] * 4)
    manifest = read_manifest(str(tmp_path / "manifest.json"))
    os.unlink(urls[2])  # one shard of four is gone: 25% of the source
    source = [Source("t", "text", 1.0, manifest)]
    world = 4  # = num_streams: each rank reads exactly one stream (the layout the README recommends)
    for rank in range(world):
        loader = make_loader(source, rank=rank, world=world, num_streams=4, window=4, global_batch=16, micro_batch=4)
        it = iter(loader)
        for _ in range(300):  # 4800 global positions: one epoch and a bit
            next(it)  # rank 0 raises RuntimeError "the last 1000 samples were all bad"
