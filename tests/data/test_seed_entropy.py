"""Regression test (a review found this, now fixed): seeds are reduced modulo 2**32, so different seeds give the same data order.

order.py `_rng` and plan.py `MixSchedule` mask every key with `& 0xFFFFFFFF` (SeedSequence takes integers of
any size): seed 7 and seed 7 + 2**32 (or -1 and 2**32 - 1) give identical batches, and the state header
refuses one for the other although the order is the same.
"""

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards


def keys(sources, seed):
    it = iter(make_loader(sources, seed=seed, num_streams=2, window=2))
    return [next(it)["keys"] for _ in range(6)]


def test_seeds_that_differ_by_2_to_the_32_give_different_orders(tmp_path):
    write_text_shards(tmp_path / "a", "a", [5, 7, 4])
    write_text_shards(tmp_path / "b", "b", [6, 6])
    sources = [
        Source(n, "text", w, read_manifest(str(tmp_path / n / "manifest.json"))) for n, w in (("a", 0.6), ("b", 0.4))
    ]
    assert keys(sources, 7) != keys(sources, 8)  # the seed matters...
    assert keys(sources, 7) != keys(sources, 7 + 2**32)  # ...but only its low 32 bits
    assert keys(sources, -1) != keys(sources, 2**32 - 1)
