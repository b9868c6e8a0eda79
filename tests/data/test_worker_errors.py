"""Regression test (a review found this, now fixed): a worker error whose message contains "timed out" is swallowed, then the steps are silently misassembled.

loader.py `_next_chunk` treats any RuntimeError mentioning "timed out" as the DataLoader's poll timeout (it matches
on the message, not the type), checks the watchdog (nobody is silent) and calls `next()` again. The worker that
raised has ended its iterator, so DataLoader now round-robins over the remaining workers; `_merge` never checks
`chunk["step"]` / `chunk["worker"]`, so each "step" is built from chunks of different steps of the other worker(s):
samples go missing, others repeat, the state advances as if nothing happened, and `data.strict` does not stop.

Realistic trigger (first test): `data.strict true` and a shard whose open fails with ETIMEDOUT
("[Errno 110] Connection timed out", NFS / a socket): `_hole` raises RuntimeError("bad data (missing_shard) at
...: [Errno 110] Connection timed out (data.strict is on)"). Second test: any processor error saying "timed out".
"""

import errno

import pytest

from open_vlm.data import stream as stream_mod
from open_vlm.data.loader import LoaderSettings, ShardLoader, Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import collate_keys, keys_only, make_loader, write_text_shards


def positions(batch):
    return [m["position"] for m in batch["meta"]]


def test_strict_mode_stops_on_a_shard_that_timed_out(tmp_path, monkeypatch):
    urls = write_text_shards(tmp_path, "t", [8, 8, 8, 8])  # 4 streams: each reads one shard, on one worker
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    real_open = stream_mod.open_url

    def open_url(url, **options):
        if url == urls[1]:
            raise OSError(errno.ETIMEDOUT, "Connection timed out")
        return real_open(url, **options)

    monkeypatch.setattr(stream_mod, "open_url", open_url)  # inherited by the forked workers
    loader = make_loader(source, strict=True, num_workers=2, num_streams=4, window=4, global_batch=4, micro_batch=4)
    it = iter(loader)
    with pytest.raises(RuntimeError, match="data.strict"):
        for step in range(8):  # the missing shard is met within the first epoch
            batch = next(it)
            assert positions(batch) == list(range(4 * step, 4 * step + 4)), f"step {step}: {positions(batch)}"


def processor(sample, source):
    if sample["__key__"] == "t_000_0005":
        raise RuntimeError("connection to the tokenizer service timed out")
    return keys_only(sample, source)


def test_a_worker_error_mentioning_timed_out_is_raised_not_swallowed(tmp_path):
    write_text_shards(tmp_path, "t", [16, 16])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    settings = LoaderSettings(seed=0, global_batch=4, micro_batch=4, num_streams=4, window=4, num_workers=2)
    it = iter(ShardLoader(source, settings, processor, collate_keys))
    with pytest.raises(RuntimeError, match="tokenizer service"):
        for step in range(10):
            batch = next(it)  # step 7 (position 28 = t_000_0005) raises in worker 0
            assert positions(batch) == list(range(4 * step, 4 * step + 4)), f"step {step}: {positions(batch)}"
