"""Regression test (a review found this, now fixed): a source that uses a subset (or another order) of a folder's shards re-parses the full
manifest JSON, and re-hashes the subset's version, in every process, every time.

Claim 6/8 (issue 14 targets: <= 64 MiB and <= 3 s per process at 1M shards): `build.source_manifest` has a fast
path only when the patterns equal the one list stored in the index (or expand to the manifest's full URL list).
A train/val split of one folder (train = shards 0..94%, val = the rest, one manifest.json) takes the slow path
for both sources: `read_manifest` (JSON parse of every shard's row) + `select` + `manifest_version` over Python
objects. Measured on the 2-core VM with `bench/scale_sim.write_synthetic` (200k shards): full pattern 0.03 s /
+5 MiB; the 95% subset 3.9-4.4 s / +172 MiB per process, the same on the second process (nothing is cached).
Linear: ~20 s and ~850 MiB per rank at 1M shards.
"""

import pytest

from open_vlm.config.schema import SourceConfig
from open_vlm.data import build
from tests.data.shardgen import write_text_shards


def test_a_subset_source_is_served_from_an_index_the_second_time(tmp_path, monkeypatch):
    urls = write_text_shards(tmp_path, "x", [3, 1, 4, 1, 5])
    train = SourceConfig(name="train", urls=[str(tmp_path / "x-{00000..00003}.tar")])
    first = build.source_manifest(train)  # first process: may parse the JSON
    assert list(first.urls) == urls[:4]
    monkeypatch.setattr(build, "read_manifest", lambda _: pytest.fail("parsed the full manifest JSON again"))
    again = build.source_manifest(train)  # every later process (every rank, every resume)
    assert list(again.urls) == urls[:4]
