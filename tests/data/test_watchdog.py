"""Regression test (a review found this, now fixed): the hung-worker watchdog stops a healthy run, blaming an idle worker.

Claim 7: a worker that makes no progress for `data.worker_timeout_s` is reported with its shard. `WorkerWatch.check`
names the worker silent longest, but a worker that finished its prefetched steps is silent because it waits for
work, not because it hangs. Here worker 0 is slow but makes progress every 0.25 s (a step takes it 4 s, longer
than the 3 s timeout); worker 1 finished its share and idles: the run stops with "data worker 1 made no
progress ... while reading <its last shard>". With the default 300 s, a rank whose step takes one worker more
than 5 minutes (a slow bucket, a big seek) while another waits is stopped the same way.
"""

import time

from torch.utils.data import get_worker_info

from open_vlm.data.loader import LoaderSettings, ShardLoader, Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import collate_keys, keys_only, write_text_shards


def slow_on_worker_0(sample, source):
    if get_worker_info().id == 0:
        time.sleep(0.25)
    return keys_only(sample, source)


def test_a_slow_but_progressing_worker_does_not_trip_the_watchdog(tmp_path):
    write_text_shards(tmp_path, "t", [64, 64])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    settings = LoaderSettings(
        seed=0, global_batch=32, micro_batch=32, num_streams=8, window=4, num_workers=2, worker_timeout_s=3.0
    )
    loader = ShardLoader(source, settings, slow_on_worker_0, collate_keys)
    it = iter(loader)
    for _ in range(2):
        assert len(next(it)["keys"]) == 32  # raises WorkerHung naming worker 1


def slow_once(sample, source):
    if sample["__key__"] == "t_000_0040":  # one sample that takes 6 s (a slow open on S3), after ~11 s of run
        time.sleep(6)
    else:
        time.sleep(0.25)
    return keys_only(sample, source)


def test_a_worker_without_slots_is_not_reported_as_hung(tmp_path):
    """More workers than a rank's slots per step (micro batch 1 at large R: 1 slot per rank per step) leaves
    workers that never get a sample, so never beat. Once the run is older than `worker_timeout_s`, the first
    wait longer than the 5 s poll (one slow shard open, well under the timeout) stops the run, naming an idle
    worker "while reading no shard yet"."""
    write_text_shards(tmp_path, "t", [64, 64])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    settings = LoaderSettings(
        seed=0, global_batch=2, micro_batch=2, num_streams=2, window=4, num_workers=3, worker_timeout_s=10.0
    )  # 2 slots per step, 3 workers: worker 2 never has a sample; the poll is min(5, 10) = 5 s
    loader = ShardLoader(source, settings, slow_once, collate_keys)
    it = iter(loader)
    for _ in range(64):  # one epoch; the 6 s sample is 4 s short of the timeout
        assert len(next(it)["keys"]) == 2
