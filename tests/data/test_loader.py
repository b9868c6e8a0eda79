"""The loader: exact state round trips, exact epochs, elastic and world-free order, mixing, workers."""

import json
import random
import signal
from collections import Counter
from contextlib import contextmanager

import pytest

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import collate_keys, keys_only, make_loader, write_shards, write_text_shards


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (the review's small-source hang)."""

    def boom(*_):
        raise TimeoutError(f"no batch within {seconds}s: the loader hangs")

    previous = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_shards(root / "a", "a", 5, [13, 9, 11, 7, 10])  # 50 samples, uneven shards
    write_shards(root / "b", "b", 3, 8)  # 24 samples
    return [
        Source("a", "image_text", 0.7, read_manifest(str(root / "a" / "manifest.json"))),
        Source("b", "image_text", 0.3, read_manifest(str(root / "b" / "manifest.json"))),
    ]


def text_source(folder, counts, name="t", weight=1.0):
    write_text_shards(folder, name, counts)
    return Source(name, "text", weight, read_manifest(str(folder / "manifest.json")))


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def keys_with_epochs(batches):
    return [(k, e) for b in batches for k, e in zip(b["keys"], b["epochs"])]


def test_same_seed_same_batches_different_seed_different(two_sources):
    a = [b["keys"] for b in take(make_loader(two_sources, seed=1), 20)]
    b = [b["keys"] for b in take(make_loader(two_sources, seed=1, num_workers=2), 20)]
    c = [b["keys"] for b in take(make_loader(two_sources, seed=2), 20)]
    assert a == b  # workers do not change the order
    assert a != c


def test_the_seed_changes_which_source_each_step_takes(two_sources):
    def sources(seed):
        return [b["sources"][0] for b in take(make_loader(two_sources, seed=seed, micro_batch=8), 20)]

    assert len({tuple(sources(s)) for s in range(5)}) > 1


def test_batches_are_one_source_and_mix_by_weight(two_sources):
    batches = take(make_loader(two_sources, micro_batch=8), 40)
    sources = [set(b["sources"]) for b in batches]
    assert all(len(s) == 1 for s in sources)
    share_a = sum(s == {"a"} for s in sources) / len(sources)
    assert abs(share_a - 0.7) <= 2 / 40


@pytest.mark.parametrize("counts", [[200, 5], [1000, 1000, 2], [3], [0, 2, 0, 1]])
def test_small_sources_yield_and_every_epoch_is_exact(tmp_path, counts):
    """Default 64 streams on sources with fewer pieces than streams: no hang, each epoch each sample once."""
    source = text_source(tmp_path, counts)
    total = sum(counts)
    loader = make_loader([source], num_streams=64, global_batch=8, micro_batch=4)
    steps = -(-3 * total // 8)
    with deadline(120):
        seen = keys_with_epochs(take(loader, 2 * steps))
    for epoch in range(3):
        keys = [k for k, e in seen if e == epoch]
        assert len(keys) == len(set(keys)) == total, f"epoch {epoch}"
    assert [e for _, e in seen] == sorted(e for _, e in seen)  # positions [eN, (e+1)N) are epoch e
    first = [k for k, _ in seen[:total]]
    assert len(set(first)) == total  # the first N samples are one epoch


def test_state_round_trip_at_random_positions_with_2_workers(two_sources):
    """Restoring at step k yields exactly the next 40 micro-batches of the uninterrupted run."""
    steps = 40  # several epochs of both sources (50 and 24 samples, 8 per step)
    loader = make_loader(two_sources, num_workers=2)
    it = iter(loader)
    reference, states = [], [loader.state_dict()]
    for _ in range(steps + 40):
        for _ in range(loader.accum_steps):
            reference.append(next(it)["keys"])
        states.append(json.loads(json.dumps(loader.state_dict())))  # as checkpoints store it
    assert states[-1]["positions"][0] // 50 >= 3  # the positions below cross epoch ends
    for step in sorted(random.Random(0).sample(range(steps), 8)):
        fresh = make_loader(two_sources, num_workers=2)
        fresh.load_state_dict(states[step])
        got = [b["keys"] for b in take(fresh, 40)]
        start = step * loader.accum_steps
        assert got == reference[start : start + 40], f"diverged after resuming at step {step}"


def test_state_is_a_handful_of_integers(two_sources):
    loader = make_loader(two_sources)
    take(loader, 10)
    state = loader.state_dict()
    assert state["version"] == 2
    assert state["step"] == 5 and len(state["positions"]) == len(state["groups_taken"]) == 2
    assert len(json.dumps(state)) < 600


def run_ranks(sources, world, workers, steps, state=None, global_batch=12, **settings):
    """Simulate `world` ranks in one process; returns (per step: sorted keys of the global batch, state)."""
    micro = global_batch // world // 2
    loaders = [
        make_loader(
            sources, rank=r, world=world, num_workers=workers, global_batch=global_batch, micro_batch=micro, **settings
        )
        for r in range(world)
    ]
    per_rank = []
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
        per_rank.append(take(loader, steps * loader.accum_steps))
    accum = loaders[0].accum_steps
    global_steps = []
    for k in range(steps):
        batch = [
            (key, e)
            for batches in per_rank
            for b in batches[k * accum : (k + 1) * accum]
            for key, e in zip(b["keys"], b["epochs"])
        ]
        global_steps.append(sorted(batch))
    states = [lo.local_state_dict() for lo in loaders]
    assert all(s["positions"] == states[0]["positions"] for s in states)  # every rank knows the position
    return global_steps, states[0]


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_global_order_is_the_same_at_every_world_size(two_sources, per_sample):
    settings = {"mix_per_sample": per_sample, "mix_group": 4} if per_sample else {}
    reference, _ = run_ranks(two_sources, world=1, workers=0, steps=8, **settings)
    for world, workers in ((2, 1), (3, 2), (4, 0), (6, 1)):
        got, _ = run_ranks(two_sources, world=world, workers=workers, steps=8, **settings)
        assert got == reference, f"world {world} x {workers} workers"


def test_elastic_resume_2x2_to_3x1_continues_the_same_order(two_sources):
    straight, _ = run_ranks(two_sources, world=1, workers=0, steps=6)
    first, state = run_ranks(two_sources, world=2, workers=2, steps=2)
    second, _ = run_ranks(two_sources, world=3, workers=1, steps=4, state=state)
    assert first + second == straight


def test_world_1_accum_4_equals_world_2_accum_2(two_sources):
    one, _ = run_ranks(two_sources, world=1, workers=0, steps=5, global_batch=16)
    two, _ = run_ranks(two_sources, world=2, workers=1, steps=5, global_batch=16)
    assert one == two


def test_per_sample_mixing_keeps_each_stream_on_one_rank(two_sources):
    """The review: per-sample mixing made every rank read every stream, and rank 0 got only source A."""
    loaders = [
        make_loader(two_sources, rank=r, world=2, global_batch=16, micro_batch=4, mix_per_sample=True, mix_group=8)
        for r in range(2)
    ]
    readers: dict = {}
    per_rank_sources = []
    for r, loader in enumerate(loaders):
        sources = Counter()
        for b in take(loader, 20):
            for meta in b["meta"]:
                readers.setdefault((meta["source"], meta["stream"]), set()).add(r)
            sources.update(b["sources"])
        per_rank_sources.append(sources)
    assert all(len(ranks) == 1 for ranks in readers.values())
    assert all(set(s) == {"a", "b"} for s in per_rank_sources)


def test_per_sample_mixing_resumes_exactly_and_mixes_within_batches(two_sources):
    loader = make_loader(two_sources, mix_per_sample=True, mix_group=2, num_workers=2)
    it = iter(loader)
    reference, states = [], []
    for _ in range(30):
        states.append(loader.state_dict())
        reference.append([next(it) for _ in range(loader.accum_steps)])
    sources = [s for step in reference for b in step for s in b["sources"]]
    assert abs(sources.count("a") / len(sources) - 0.7) <= 4 / len(sources)
    assert any(len(set(b["sources"])) == 2 for step in reference for b in step)  # mixed inside a batch
    fresh = make_loader(two_sources, mix_per_sample=True, mix_group=2)
    fresh.load_state_dict(states[11])
    got = take(fresh, 2 * 10)
    assert [b["keys"] for b in got] == [b["keys"] for step in reference[11:21] for b in step]
    with pytest.raises(ValueError, match="mixing"):
        make_loader(two_sources).load_state_dict(states[11])


def test_consumed_record_matches_what_was_read(two_sources):
    from open_vlm.data.consumed import consumed_files

    loader = make_loader(two_sources)
    batches = take(loader, 2 * 9)  # 9 steps x 8 samples = 72 samples
    state = loader.state_dict()
    per_file: Counter = Counter()
    for b in batches:
        for meta in b["meta"]:
            if meta["epoch"] == state["positions"][meta["source"]] // loader.orders[meta["source"]].total:
                per_file[meta["url"]] += 1
    files = consumed_files(loader.orders, loader.sources, state["positions"])
    assert {f["url"]: f["samples_read"] for f in files} == dict(per_file)
    assert all(f["complete"] == (f["samples_read"] == f["num_samples"]) for f in files)
    record = loader.consumed(state)
    for source, summary in zip(loader.sources, record):
        mine = [f for f in files if f["source"] == source.name]
        assert summary["shards_complete"] == sum(f["complete"] for f in mine)
        assert {p["url"] for p in summary["shards_partial"]} == {f["url"] for f in mine if not f["complete"]}
        assert summary["samples_read"] == sum(f["samples_read"] for f in mine)


def test_bad_sample_counts_are_not_multiplied_by_resuming(tmp_path):
    """The review: every rank restored the global count and the merge summed them (1 → 4 → 16 at 4 ranks)."""
    urls = write_text_shards(tmp_path, "m", [6, 6])
    (tmp_path / "m-00001.tar").unlink()
    source = Source("m", "text", 1.0, read_manifest(str(tmp_path / "manifest.json")))
    state = None
    for _ in range(3):  # three resumes at 4 ranks: each rank's local count, summed, is the global one
        loaders = [make_loader([source], rank=r, world=4, global_batch=4, micro_batch=1) for r in range(4)]
        for lo in loaders:
            if state is not None:
                lo.load_state_dict(state)
            take(lo, 1)
        total = sum(sum(lo.local_state_dict()["bad_samples"].values()) for lo in loaders)
        state = {**loaders[0].local_state_dict(), "bad_samples": {"missing_shard": total}}
    positions = state["positions"][0]
    assert urls and total == sum(1 for j in range(positions) if loaders[0].orders[0].slot(j).shard == 1)


def test_old_or_damaged_states_are_refused_clearly(two_sources):
    loader = make_loader(two_sources)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="format 1.*reset_data"):
        loader.load_state_dict({**state, "version": 1})
    with pytest.raises(ValueError, match="format 1"):
        loader.load_state_dict({k: v for k, v in state.items() if k != "version"})
    for key in ("positions", "seed", "groups_taken"):
        with pytest.raises(ValueError, match=key):
            loader.load_state_dict({k: v for k, v in state.items() if k != key})


@pytest.mark.slow
def test_spawned_workers(two_sources):
    """macOS and Python 3.14 start workers by spawn: everything they get must pickle."""
    a = [b["keys"] for b in take(make_loader(two_sources), 6)]
    b = [b["keys"] for b in take(make_loader(two_sources, num_workers=1, multiprocessing_context="spawn"), 6)]
    assert a == b


def test_chunks_cross_to_the_main_process_packed(tmp_path):
    """Token arrays ride in the chunk's pickle as numpy arrays and images as one shared tensor (DataLoader's default
    conversion would make every array a tensor with a shared-memory segment of its own)."""
    import numpy as np
    import torch

    from open_vlm.data.loader import LoaderSettings, ShardLoader

    write_shards(tmp_path / "c", "c", 2, 8)
    source = Source("c", "image_text", 1.0, read_manifest(str(tmp_path / "c" / "manifest.json")))

    def tokens(sample, source):
        return {"input_ids": torch.arange(1 + int(sample["__key__"][-1])), "pixel_values": sample["image"]}  # ragged

    settings = LoaderSettings(
        seed=0, global_batch=4, micro_batch=4, image_size=8, num_streams=4, window=4, num_workers=1
    )
    chunk = next(iter(ShardLoader([source], settings, tokens, lambda rows: rows)._dataloader()))
    kind, ids = chunk["samples"]["columns"]["input_ids"]
    assert kind == "arrays" and all(isinstance(v, np.ndarray) for v in ids)
    kind, images = chunk["samples"]["columns"]["pixel_values"]
    assert kind == "stacked" and images.shape == (4, 8, 8, 3) and images.is_shared()


def test_the_main_process_collates_on_one_thread_and_restores_the_count(two_sources):
    """Parallel copies in the main process left torch's OpenMP threads spinning, taking CPU from the workers."""
    import torch

    from open_vlm.data.loader import LoaderSettings, ShardLoader

    seen = []

    def collate(rows):
        seen.append(torch.get_num_threads())
        return collate_keys(rows)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        settings = LoaderSettings(seed=0, global_batch=8, micro_batch=4, image_size=8, num_streams=8, window=4)
        batches = iter(ShardLoader(two_sources, settings, keys_only, collate))
        for _ in range(3):
            next(batches)
            assert torch.get_num_threads() == 2  # what the training step gets back between batches
        assert seen == [1, 1, 1]
    finally:
        torch.set_num_threads(threads)
