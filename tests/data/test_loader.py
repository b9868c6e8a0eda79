"""The loader: exact state round trips, elastic resume, mixing, splitting."""

import random
from collections import Counter

import pytest

from open_vlm.data.loader import Source, merge_rank_states
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_shards


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root / "a", "a", 5, [13, 9, 11, 7, 10])  # 50 samples, uneven shards
    write_shards(root / "b", "b", 3, 8)  # 24 samples
    return [
        Source("a", "image_text", 0.7, read_manifest(str(root / "a" / "manifest.json"))),
        Source("b", "image_text", 0.3, read_manifest(str(root / "b" / "manifest.json"))),
    ]


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_different_seed_different(two_sources):
    a = [b["keys"] for b in take(make_loader(two_sources, seed=1), 20)]
    b = [b["keys"] for b in take(make_loader(two_sources, seed=1, num_workers=2), 20)]
    c = [b["keys"] for b in take(make_loader(two_sources, seed=2), 20)]
    assert a == b  # workers do not change the order
    assert a != c


def test_batches_are_one_source_and_mix_by_weight(two_sources):
    batches = take(make_loader(two_sources, micro_batch=8), 40)
    sources = [set(b["sources"]) for b in batches]
    assert all(len(s) == 1 for s in sources)
    share_a = sum(s == {"a"} for s in sources) / len(sources)
    assert abs(share_a - 0.7) <= 1 / 40


def test_state_round_trip_at_20_random_positions_with_2_workers(two_sources):
    """Restoring at step k yields exactly the next 50 micro-batches of the uninterrupted run."""
    steps = 70  # several epochs of both sources (50 and 24 samples, 8 per step)
    loader = make_loader(two_sources, num_workers=2)
    it = iter(loader)
    reference, states = [], [loader.state_dict()]
    for _ in range(steps + 50):
        for _ in range(loader.accum_steps):
            reference.append(next(it)["keys"])
        states.append(loader.state_dict())
    epochs = {m[1] for rows in states[-1]["streams"] for m in rows}
    assert max(epochs) >= 3  # the positions below cross epoch ends
    rng = random.Random(0)
    for step in sorted(rng.sample(range(steps), 20)):
        fresh = make_loader(two_sources, num_workers=2)
        fresh.load_state_dict(states[step])
        got = [b["keys"] for b in take(fresh, 50)]
        start = step * loader.accum_steps
        assert got == reference[start : start + 50], f"diverged after resuming at step {step}"


def test_state_is_small(two_sources):
    loader = make_loader(two_sources)
    take(loader, 10)
    state = loader.state_dict()
    ints = sum(len(row) for rows in state["streams"] for row in rows)
    assert ints == 4 * sum(o.num_streams for o in loader.orders)


def run_ranks(sources, world, workers, steps, state=None, global_batch=12):
    """Simulate `world` ranks in one process; returns (keys per rank with epochs, merged state)."""
    micro = global_batch // world // 2
    loaders = [
        make_loader(sources, rank=r, world=world, num_workers=workers, global_batch=global_batch, micro_batch=micro)
        for r in range(world)
    ]
    seen = []
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
        for batch in take(loader, steps * loader.accum_steps):
            seen.append(list(zip(batch["keys"], batch["epochs"])))
    return seen, merge_rank_states([lo.local_state_dict() for lo in loaders])


def test_elastic_resume_2x2_to_3x1_covers_epoch_exactly_once(two_sources):
    source = two_sources[:1]  # 50 samples
    first, state = run_ranks(source, world=2, workers=2, steps=2)  # 24 samples: about half an epoch
    # Continue at world 3 x 1 worker until every stream has finished epoch 0.
    second, _ = run_ranks(source, world=3, workers=1, steps=4, state=state)
    epoch0 = Counter(k for batch in first + second for k, e in batch if e == 0)
    all_keys = {f"a_{s:03d}_{i:04d}" for s, n in enumerate([13, 9, 11, 7, 10]) for i in range(n)}
    assert set(epoch0) == all_keys
    assert max(epoch0.values()) == 1


def test_ranks_are_disjoint_and_same_length(two_sources):
    per_rank, _ = run_ranks(two_sources, world=2, workers=1, steps=3, global_batch=8)
    half = len(per_rank) // 2
    keys0 = [k for b in per_rank[:half] for k, _ in b]
    keys1 = [k for b in per_rank[half:] for k, _ in b]
    assert len(keys0) == len(keys1) == 12
    assert not set(keys0) & set(keys1)


def test_world_1_accum_4_equals_world_2_accum_2(two_sources):
    one = make_loader(two_sources, global_batch=16, micro_batch=4)
    batches = take(one, 4 * 5)
    steps_one = [sorted(sum((b["keys"] for b in batches[i : i + 4]), [])) for i in range(0, 20, 4)]
    ranks = [make_loader(two_sources, global_batch=16, micro_batch=4, rank=r, world=2) for r in range(2)]
    per_rank = [take(lo, 2 * 5) for lo in ranks]
    steps_two = [
        sorted(sum((b["keys"] for r in range(2) for b in per_rank[r][i : i + 2]), [])) for i in range(0, 10, 2)
    ]
    assert steps_one == steps_two


def test_consumed_record_counts_what_was_read(two_sources):
    loader = make_loader(two_sources)
    take(loader, 2 * 9)  # 9 steps x 8 samples = 72 samples
    consumed = loader.consumed()
    assert sum(c["samples_read"] for c in consumed) == 72
    by_source = Counter()
    for c in consumed:
        by_source[c["source"]] += c["samples_read"]
        assert c["complete"] == (c["samples_read"] >= c["num_samples"])
    state = loader.state_dict()
    assert by_source["a"] == state["positions"][0] and by_source["b"] == state["positions"][1]


def test_per_sample_mixing_resumes_exactly_and_mixes_within_batches(two_sources):
    loader = make_loader(two_sources, mix_per_sample=True, num_workers=2)
    it = iter(loader)
    reference, states = [], []
    for _ in range(30):
        states.append(loader.state_dict())
        reference.append([next(it) for _ in range(loader.accum_steps)])
    sources = [s for step in reference for b in step for s in b["sources"]]
    assert abs(sources.count("a") / len(sources) - 0.7) <= 1 / len(sources) + 1e-9
    assert any(len(set(b["sources"])) == 2 for step in reference for b in step)  # mixed inside a batch
    fresh = make_loader(two_sources, mix_per_sample=True)
    fresh.load_state_dict(states[11])
    got = take(fresh, 2 * 10)
    assert [b["keys"] for b in got] == [b["keys"] for step in reference[11:21] for b in step]
    with pytest.raises(ValueError, match="mixing"):
        make_loader(two_sources).load_state_dict(states[11])
