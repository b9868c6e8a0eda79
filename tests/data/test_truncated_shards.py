"""Regression test (a review found this, now fixed): a truncated shard (or one with fewer samples than its manifest says) is re-read from its
start once per window for every position past its real end: quadratic in the shard size.

Claim 4/8: bad data costs its own samples; a resume/read reads at most one window before its first sample.
`StreamReader._read_run` reuses an open shard only within READ_AHEAD_LIMIT (64) samples of where it stopped; past a
truncation the open shard stopped at the real end, so every later window of the stream's range is more than 64
samples away: it re-opens, `seek_to_sample` runs into the end of the archive (False), and the fallback reads the
whole remaining file again to "skip" to the window, finds nothing and returns holes. Nothing remembers that the
shard ends early (missing shards are remembered in `_missing`; short ones are not). Here: a 400-sample shard cut at
half, 1 stream, window 4: 34 opens and ~59x the file's bytes read for one epoch. A 10k-sample shard cut at half
with window 32 is ~150 full re-reads of 0.5 GB, per epoch, per stream that covers the missing half.
"""

import os

from open_vlm.data import stream as stream_mod
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards


def test_a_truncated_shard_is_read_about_once_per_epoch(tmp_path, monkeypatch):
    urls = write_text_shards(tmp_path, "t", [400])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    size = os.path.getsize(urls[0])
    with open(urls[0], "r+b") as f:
        f.truncate(size // 2)
    read = {"opens": 0, "bytes": 0}
    real_open = stream_mod.open_url

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read["bytes"] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

    def counting_open(url, **options):
        read["opens"] += 1
        return Counting(real_open(url, **options))

    monkeypatch.setattr(stream_mod, "open_url", counting_open)
    loader = make_loader(source, num_streams=1, window=4, global_batch=8, micro_batch=8)
    it = iter(loader)
    holes = sum(len(next(it)["holes"]) for _ in range(50))  # one epoch
    assert 195 <= holes <= 205  # the lost half (behaviour is right; the cost is not)
    assert read["opens"] <= 3 and read["bytes"] <= 3 * (size // 2), read
