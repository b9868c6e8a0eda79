"""Properties of the whole loader over random shard sets: it never hangs, every epoch is exact, the global
order is the same at every world size and mixing mode, and the consumed record matches what was read."""

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from open_vlm.data.consumed import consumed_files
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader, write_text_shards
from tests.data.test_loader import deadline

counts_strategy = st.one_of(
    st.lists(st.integers(0, 12), min_size=1, max_size=6),
    st.builds(lambda big, tiny: [big] + tiny, st.integers(20, 60), st.lists(st.integers(0, 2), max_size=8)),
).filter(lambda counts: sum(counts) > 0)


def global_steps(sources, world, steps, **settings):
    """Per step, the sorted (key, epoch) of the global batch, from `world` simulated ranks; and rank 0's loader."""
    loaders = [make_loader(sources, rank=r, world=world, **settings) for r in range(world)]
    per_rank = []
    for loader in loaders:
        it = iter(loader)
        per_rank.append([[next(it) for _ in range(loader.accum_steps)] for _ in range(steps)])
    return [
        sorted((key, epoch) for rank in per_rank for b in rank[k] for key, epoch in zip(b["keys"], b["epochs"]))
        for k in range(steps)
    ], loaders[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    a=counts_strategy,
    b=counts_strategy,
    streams=st.integers(1, 20),
    window=st.integers(1, 6),
    per_sample=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_the_loader_on_random_shard_sets(a, b, streams, window, per_sample, seed):
    root = Path(tempfile.mkdtemp())
    sources = []
    for name, counts, weight in (("a", a, 0.6), ("b", b, 0.4)):
        write_text_shards(root / name, name, counts)
        sources.append(Source(name, "text", weight, read_manifest(str(root / name / "manifest.json"))))
    settings = dict(
        seed=seed,
        global_batch=12,
        micro_batch=2,
        num_streams=streams,
        window=window,
        mix_per_sample=per_sample,
        mix_group=2 if per_sample else 0,
    )
    totals = [sum(a), sum(b)]
    steps = max(2, -(-2 * sum(totals) // 12))  # about two epochs of both sources
    with deadline(120):
        reference, loader = global_steps(sources, 1, steps, **settings)
        for world in (2, 3):
            got, _ = global_steps(sources, world, steps, **{**settings, "micro_batch": 12 // world // 2})
            assert got == reference, f"world {world} changes the order"
    read = [(key, epoch) for step in reference for key, epoch in step]
    for name, total in zip(("a", "b"), totals):
        mine = [(k, e) for k, e in read if k.startswith(name + "_")]
        last = max((e for _, e in mine), default=0)
        for epoch in range(last):  # every finished epoch: each sample exactly once
            keys = [k for k, e in mine if e == epoch]
            assert len(keys) == len(set(keys)) == total, f"source {name} epoch {epoch}"
    state = loader.state_dict()
    files = consumed_files(loader.orders, loader.sources, state["positions"])
    want = Counter()
    for key, epoch in read:
        src = 0 if key.startswith("a_") else 1
        if epoch == state["positions"][src] // totals[src]:
            shard = int(key.split("_")[1])
            want[str(root / "ab"[src] / f"{'ab'[src]}-{shard:05d}.tar")] += 1
    assert {f["url"]: f["samples_read"] for f in files} == dict(want)
