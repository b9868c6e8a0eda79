"""Regression test (a review found this, now fixed): one transient read error in the middle of a shard turns the rest of the stream's run in it into holes.

Claim 4: counts are exact; bad samples are the bad data. `StreamReader._read_run` reuses the open shard for the
next window whenever the offset is in reach (`reusable`), even when its sample iterator already ended on an error:
`read()` then returns nothing and every later window of that shard becomes `truncated_shard` holes, although the
shard is intact (a connection reset on S3 is retried at open time only, shards.py `open_url`). Here a 40-sample
shard read by one stream loses 31 samples to a single error; with 10k-sample shards it is thousands, enough to
trip the "last 1000 samples were all bad" stop.
"""

from open_vlm.data import stream as stream_mod
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards


class FlakyOnce:
    """A file that raises one ConnectionResetError once ~10 samples have been read, then reads normally."""

    failed = False

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        if not FlakyOnce.failed and self.f.tell() > 10 * 2048:
            FlakyOnce.failed = True
            raise ConnectionResetError("connection reset by peer")
        return self.f.read(n)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_transient_read_error_costs_at_most_the_window_it_hit(tmp_path, monkeypatch):
    write_text_shards(tmp_path, "t", [40])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    real_open = stream_mod.open_url
    monkeypatch.setattr(stream_mod, "open_url", lambda url, **options: FlakyOnce(real_open(url, **options)))
    loader = make_loader(source, num_streams=1, window=4, global_batch=8, micro_batch=8)
    it = iter(loader)
    holes = sum(len(next(it)["holes"]) for _ in range(5))  # one epoch
    assert FlakyOnce.failed
    assert holes <= 4, f"{holes} of 40 samples lost to one transient error: {loader.state_dict()['bad_samples']}"


def test_a_shard_that_failed_to_open_once_is_tried_again_in_a_later_epoch(tmp_path, monkeypatch):
    """`_missing` remembers a failed open for the life of the worker: a bucket that throttled for a few seconds
    (open_url's 4 retries span 3.5 s) loses that shard in every later epoch of a multi-day run."""
    urls = write_text_shards(tmp_path, "t", [8, 8])
    source = [Source("t", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))]
    real_open = stream_mod.open_url
    failures = []

    def open_once_failing(url, **options):
        if url == urls[1] and not failures:
            failures.append(url)
            raise OSError("503 SlowDown (after open_url's retries)")
        return real_open(url, **options)

    monkeypatch.setattr(stream_mod, "open_url", open_once_failing)
    loader = make_loader(source, num_streams=1, window=4, global_batch=8, micro_batch=8)
    it = iter(loader)
    holes_per_epoch = [sum(len(next(it)["holes"]) for _ in range(2)) for _ in range(3)]
    assert holes_per_epoch[0] == 8  # the epoch of the failure: that shard's 8 samples
    assert holes_per_epoch[1:] == [0, 0], holes_per_epoch  # later epochs: the shard is back
