"""The consumed record equals what the positions read, sample by sample, for any layout."""

from collections import Counter
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.data.consumed import consumed_files, consumed_record
from open_vlm.data.manifest import UrlColumn
from open_vlm.data.order import SourceOrder
from tests.data.test_order import shard_counts


def fake_source(counts):
    urls = UrlColumn.from_list([f"/d/s{i}.tar" for i in range(len(counts))])
    return SimpleNamespace(name="s", manifest=SimpleNamespace(urls=urls))


@settings(max_examples=150, deadline=None)
@given(
    counts=shard_counts,
    streams=st.integers(1, 40),
    window=st.integers(1, 7),
    fraction=st.floats(0, 3.5),
)
def test_consumed_files_and_record_match_a_sample_by_sample_count(counts, streams, window, fraction):
    order = SourceOrder(np.array(counts), 1, 0, streams, window)
    position = int(fraction * order.total)
    epoch = position // order.total
    read = Counter(order.slot(j).shard for j in range(epoch * order.total, position))
    source = fake_source(counts)
    files = consumed_files([order], [source], [position])
    assert {f["url"]: f["samples_read"] for f in files} == {f"/d/s{k}.tar": n for k, n in read.items()}
    assert all(f["complete"] == (f["samples_read"] == counts[int(f["url"][4:-4])]) for f in files)
    assert all(f["epoch"] == f["epochs_complete"] == epoch for f in files)
    (record,) = consumed_record([order], [source], [position])
    assert record["samples_read"] == position - epoch * order.total
    assert record["shards_complete"] == sum(f["complete"] for f in files)
    assert record["shards_partial_count"] == sum(not f["complete"] for f in files)
