"""The sample order is a pure function of (seed, epoch, manifests, weights, position)."""

from collections import Counter

import numpy as np
import pytest

from open_vlm.data.manifest import ShardInfo, ShardManifest
from open_vlm.data.order import MixSchedule, SourceOrder, StreamCursor, source_pieces


def manifest(counts):
    return ShardManifest([ShardInfo(f"s{i}.tar", c, 0, "") for i, c in enumerate(counts)])


def stream_sequence(order: SourceOrder, stream: int, n: int):
    """(epoch, shard, offset) of the first n slots of a stream, walking cursors only."""
    cursor, out = StreamCursor(), []
    while len(out) < n:
        piece = order.piece_at(stream, cursor)
        if piece is None:
            cursor = StreamCursor(cursor.epoch + 1, 0, 0)
            continue
        offset = order.slot_order(stream, cursor, piece)[cursor.slot]
        out.append((cursor.epoch, piece.shard, piece.start + int(offset)))
        cursor = order.advance(stream, cursor)
    return out


def test_same_seed_same_order_different_seed_different():
    m = manifest([10, 7, 12, 9])
    a = [stream_sequence(SourceOrder(m, 1, 0, 4, 3), p, 30) for p in range(4)]
    b = [stream_sequence(SourceOrder(m, 1, 0, 4, 3), p, 30) for p in range(4)]
    c = [stream_sequence(SourceOrder(m, 2, 0, 4, 3), p, 30) for p in range(4)]
    assert a == b
    assert a != c


def test_each_sample_once_per_epoch_and_epochs_differ():
    m = manifest([10, 7, 12, 9])
    order = SourceOrder(m, seed=5, source_index=0, num_streams=4, window=4)
    seen = Counter()
    per_epoch = {0: [], 1: []}
    for p in range(4):
        for epoch, shard, offset in stream_sequence(order, p, 40):
            if epoch in per_epoch:
                seen[(epoch, shard, offset)] += 1
                per_epoch[epoch].append((p, shard, offset))
    everything = {(s, o) for s, c in enumerate([10, 7, 12, 9]) for o in range(c)}
    for epoch in (0, 1):
        assert {(e_s, e_o) for _, e_s, e_o in per_epoch[epoch]} == everything
    assert all(v == 1 for v in seen.values())
    assert per_epoch[0] != per_epoch[1]  # a new permutation each epoch


def test_pieces_split_shards_when_fewer_shards_than_streams():
    m = manifest([10, 6])
    pieces = source_pieces(m, 8)
    assert len(pieces) >= 8
    for shard, count in ((0, 10), (1, 6)):
        ranges = sorted((p.start, p.end) for p in pieces if p.shard == shard)
        assert ranges[0][0] == 0 and ranges[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
    order = SourceOrder(m, 0, 0, 8, 4)
    assert all(len(order.stream_deal(p, 0)) >= 1 for p in range(8))


def test_window_shuffle_stays_inside_windows():
    m = manifest([20])
    order = SourceOrder(m, 3, 0, 1, window=5)
    piece = order.piece_at(0, StreamCursor())
    slots = order.slot_order(0, StreamCursor(), piece)
    assert sorted(slots) == list(range(20))
    for w in range(4):
        assert sorted(slots[w * 5 : w * 5 + 5]) == list(range(w * 5, w * 5 + 5))
    assert list(slots) != list(range(20))


@pytest.mark.parametrize("weights", [(0.7, 0.2, 0.1), (1, 1), (5, 3, 1, 1)])
def test_mixing_proportions_exact_over_any_window(weights):
    schedule = MixSchedule(list(weights))
    picks = schedule.sources(0, [0] * len(weights), 1000)
    w = np.array(schedule.weights)
    counts = np.zeros(len(weights))
    for k, s in enumerate(picks):
        counts[s] += 1
        assert np.all(np.abs(counts - w * (k + 1)) < 1.0 + 1e-9)  # never more than one batch off
    # Any window of 125 batches (1,000 samples at global batch 8): within ±2% per source.
    for start in range(0, 1000 - 125, 25):
        window = Counter(picks[start : start + 125])
        for s, ws in enumerate(w):
            assert abs(window[s] / 125 - ws) <= 0.02 + 1e-9


def test_schedule_resumes_from_counts():
    schedule = MixSchedule([0.5, 0.3, 0.2])
    full = schedule.sources(0, [0, 0, 0], 50)
    taken = [full[:20].count(s) for s in range(3)]
    assert schedule.sources(20, taken, 30) == full[20:]


def test_global_batch_plans_per_batch_and_per_sample():
    schedule = MixSchedule([0.7, 0.2, 0.1])
    taken, positions = [0, 0, 0], [0, 0, 0]
    plan = schedule.global_batch(0, taken, positions, 12)
    assert plan == [(0, t) for t in range(12)] and taken == [1, 0, 0] and positions == [12, 0, 0]
    for world in (1, 2, 3, 4):  # rank shares partition the batch and are equally long
        parts = [plan[r::world] for r in range(world)]
        assert sorted(sum(parts, [])) == plan and len({len(p) for p in parts}) == 1
    taken, positions = [0, 0, 0], [0, 0, 0]
    picks = []
    for step in range(84):  # 1,008 samples
        plan = schedule.global_batch(step, taken, positions, 12, per_sample=True)
        picks += [src for src, _ in plan]
    counts = np.zeros(3)
    for n, src in enumerate(picks):
        counts[src] += 1
        assert np.all(np.abs(counts - np.array(schedule.weights) * (n + 1)) < 1.0 + 1e-9)  # exact to a sample
    assert positions == [int(c) for c in counts] and taken == [0, 0, 0]
