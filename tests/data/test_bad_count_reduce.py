"""Regression test (a review found this, now fixed): bad-sample counts stop being exact past 2**24 (16.7M) once they go through the all-reduce.

Claim 4: counts are exact. `ShardLoader.state_dict()` sums the ranks' counts as a float32 tensor
(loader.py: `torch.tensor([float(...)])` then `dist.all_reduce`), so any count above 2**24 is rounded: a
billion-sample run with 2% undecodable images has 20M `bad_image`. 2 ranks, gloo, 2**24 + 1 bad images on
rank 0 (set directly: reading that many samples is not needed to show the arithmetic) are saved as 2**24.
"""

import torch.distributed as dist
import torch.multiprocessing as mp

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards


def _rank(rank: int, folder: str, init: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    source = Source("t", "text", 1.0, read_manifest(f"{folder}/manifest.json"))
    loader = make_loader([source], rank=rank, world=2)
    loader.bad_samples["bad_image"] = 2**24 + 1 if rank == 0 else 0
    out[rank] = loader.state_dict()["bad_samples"]
    dist.destroy_process_group()


def test_large_bad_sample_counts_survive_the_state_all_reduce_exactly(tmp_path):
    write_text_shards(tmp_path, "t", [8])
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path), f"file://{tmp_path}/rdzv", out), nprocs=2)
        got = dict(out)
    assert got[0] == {"bad_image": 2**24 + 1}, got[0]
