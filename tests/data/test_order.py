"""The sample order is a pure function of (seed, manifest, weights, position), exact per epoch at every edge."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.data.order import SourceOrder
from open_vlm.data.plan import MixSchedule, Planner

# Shard sizes as users have them: one shard, empty shards, one huge among many tiny, fewer samples than streams.
shard_counts = st.one_of(
    st.lists(st.integers(0, 40), min_size=1, max_size=12),
    st.builds(lambda big, tiny: [big] + tiny, st.integers(50, 400), st.lists(st.integers(0, 3), max_size=20)),
).filter(lambda counts: sum(counts) > 0)


def epoch_samples(order: SourceOrder, epoch: int) -> list[tuple[int, int]]:
    slots = [order.slot(j) for j in range(epoch * order.total, (epoch + 1) * order.total)]
    assert all(s.epoch == epoch for s in slots)
    return [(s.shard, s.offset) for s in slots]


def all_samples(counts) -> set[tuple[int, int]]:
    return {(shard, i) for shard, n in enumerate(counts) for i in range(n)}


@settings(max_examples=150, deadline=None)
@given(counts=shard_counts, streams=st.integers(1, 80), window=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_every_epoch_is_each_sample_exactly_once(counts, streams, window, seed):
    order = SourceOrder(np.array(counts), seed, 0, streams, window)
    for epoch in (0, 1, 5):
        got = epoch_samples(order, epoch)
        assert len(got) == len(set(got)) == sum(counts)
        assert set(got) == all_samples(counts)


@settings(max_examples=100, deadline=None)
@given(counts=shard_counts, streams=st.integers(1, 80), window=st.integers(1, 9))
def test_a_stream_reads_one_contiguous_range_per_epoch_in_window_order(counts, streams, window):
    order = SourceOrder(np.array(counts), 3, 0, streams, window)
    for p in range(order.num_streams):
        slots = [order.slot(j) for j in range(p, 3 * order.total, order.num_streams)]
        for epoch in range(3):
            mine = [s for s in slots if s.epoch == epoch]
            assert len({s.range_index for s in mine}) <= 1
            assert [s.output for s in mine] == list(range(len(mine)))  # walks its range from the start
            if not mine:
                continue
            start, length = order.range_bounds(mine[0].range_index)
            assert len(mine) == length
            windows = [(s.layout - start) // window for s in mine]
            assert windows == sorted(windows)  # window after window: the reads go forward
            assert sorted(s.layout for s in mine) == list(range(start, start + length))


@pytest.mark.parametrize("counts", [[200, 5], [1000, 1000, 2], [1], [0, 3, 0], [5]])
def test_small_sources_never_leave_a_stream_without_samples(counts):
    """The review's hangs: fewer shard pieces than streams. Every position now has a sample."""
    order = SourceOrder(np.array(counts), 0, 0, 64, 32)
    assert order.num_streams == min(64, sum(counts))
    for j in range(0, 3 * order.total, 7):
        slot = order.slot(j)
        assert 0 <= slot.offset < counts[slot.shard]


def test_epochs_do_not_drift():
    """200 shards, P=64: after 100 nominal epochs every stream is in epoch 100 exactly when the source is."""
    counts = np.full(200, 10)
    order = SourceOrder(counts, 0, 0, 64, 32)
    n = order.total
    for j in (100 * n - 1, 100 * n, 100 * n + 63):
        assert order.slot(j).epoch == j // n
    first_n = {(s.shard, s.offset) for s in (order.slot(j) for j in range(n))}
    assert len(first_n) == n


def test_seed_and_epoch_change_the_order():
    counts = np.array([10, 7, 12, 9])
    a = epoch_samples(SourceOrder(counts, 1, 0, 4, 3), 0)
    assert a == epoch_samples(SourceOrder(counts, 1, 0, 4, 3), 0)
    assert a != epoch_samples(SourceOrder(counts, 2, 0, 4, 3), 0)
    assert a != epoch_samples(SourceOrder(counts, 1, 0, 4, 3), 1)
    assert a != epoch_samples(SourceOrder(counts, 1, 1, 4, 3), 0)  # sources are shuffled independently


def test_order_pickles_for_spawned_workers():
    import pickle

    order = SourceOrder(np.array([3, 4]), 0, 0, 4, 2)
    order.slot(5)
    copy = pickle.loads(pickle.dumps(order))
    assert [copy.slot(j) for j in range(14)] == [order.slot(j) for j in range(14)]


def test_a_million_shards_cost_arrays_not_objects():
    counts = np.full(1_000_000, 1000, dtype=np.int64)
    order = SourceOrder(counts, 0, 0, 8192, 32)
    shards, ends = order.layout(0)
    assert order.nonempty is None  # no empty shard: the layout permutes every shard, no index array needed
    held = order.counts.nbytes + shards.nbytes + ends.nbytes
    assert held < 20 * 2**20
    seen = {(s.shard, s.offset) for s in (order.slot(j) for j in range(0, 2_000_000, 997))}
    assert len(seen) == len(range(0, 2_000_000, 997))


# --- plans: groups, ranks and workers -----------------------------------------------------------------------


def step_slots(planner, state, world, workers):
    """Per step: the slots each (rank, worker) takes."""
    plan = planner.next_step(state)
    return plan, {(r, w): plan.rank_slots(r, world)[w::workers] for r in range(world) for w in range(workers)}


@settings(max_examples=100, deadline=None)
@given(
    world=st.sampled_from([1, 2, 3, 4, 6, 8]),
    workers=st.integers(1, 4),
    micro=st.integers(1, 4),
    accum=st.integers(1, 3),
    weights=st.lists(st.floats(0.1, 5), min_size=1, max_size=4),
    per_sample=st.booleans(),
)
def test_every_layout_takes_exactly_the_global_batch(world, workers, micro, accum, weights, per_sample):
    """Ranks x workers split each step's global batch exactly; the batch itself never depends on them."""
    global_batch = world * micro * accum
    group = 1 if per_sample else global_batch
    reference = Planner(weights, 0, global_batch, group)
    ref_state, state = reference.initial(), reference.initial()
    planner = Planner(weights, 0, global_batch, group)
    for _ in range(5):
        plan, shares = step_slots(planner, state, world, workers)
        ref = reference.next_step(ref_state)
        taken = [slot for share in shares.values() for slot in share]
        assert sorted(taken) == sorted(ref.slot(i) for i in range(global_batch))
        assert all(len(plan.rank_slots(r, world)) == global_batch // world for r in range(world))


@pytest.mark.parametrize("world,workers,per_sample", [(1, 1, False), (2, 2, False), (4, 2, True), (2, 4, True)])
def test_each_stream_is_read_by_one_worker_when_the_layout_divides(world, workers, per_sample):
    streams, global_batch = 16, 32
    planner = Planner([0.6, 0.4], 0, global_batch, 8 if per_sample else global_batch)
    state = planner.initial()
    readers: dict[tuple[int, int], set] = {}
    for _ in range(20):
        _, shares = step_slots(planner, state, world, workers)
        for who, slots in shares.items():
            for source, position in slots:
                readers.setdefault((source, position % streams), set()).add(who)
    assert all(len(who) == 1 for who in readers.values())


def test_per_sample_mixing_gives_every_rank_every_source():
    """The review: equal weights, 2 ranks, per-sample mixing → rank 0 only ever got source A."""
    planner = Planner([1.0, 1.0], 0, 16, 8)
    state = planner.initial()
    per_rank = {0: Counter(), 1: Counter()}
    for _ in range(10):
        plan = planner.next_step(state)
        for r in range(2):
            per_rank[r].update(source for source, _ in plan.rank_slots(r, 2))
    assert per_rank[0] == per_rank[1] == Counter({0: 40, 1: 40})


@given(weights=st.lists(st.floats(0.05, 10), min_size=1, max_size=5), seed=st.integers(0, 1000))
@settings(max_examples=60, deadline=None)
def test_mixing_proportions_stay_within_two_groups(weights, seed):
    schedule = MixSchedule(weights, seed)
    taken = [0] * len(weights)
    for h in range(200):
        taken[schedule.pick(taken)] += 1
        target = schedule.weights * (h + 1)
        assert np.all(np.abs(np.array(taken) - target) <= 2)


def test_the_seed_changes_the_mixing_schedule():
    def sequence(seed):
        schedule, taken, out = MixSchedule([1, 1, 1], seed), [0, 0, 0], []
        for _ in range(12):
            out.append(schedule.pick(taken))
            taken[out[-1]] += 1
        return out

    assert sequence(0) == sequence(0)
    assert len({tuple(sequence(s)) for s in range(6)}) > 1


def test_a_group_must_divide_the_global_batch():
    with pytest.raises(ValueError, match="mix_group"):
        Planner([1.0], 0, 12, 8)
