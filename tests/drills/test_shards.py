"""Drills on damaged shards: shards that disappear or are cut short between the manifest and the read (before the
run, between a kill and the resume, while a worker reads), and a hand-made gzipped shard cut short with no
manifest yet. The run trains on; every lost sample is a counted hole at its own position; nothing else moves."""

import random
import shutil

import pytest

from open_vlm.data.build import source_manifest
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from open_vlm.data.shards import iter_tar_samples
from open_vlm.errors import DataError
from tests.data.shardgen import make_loader, write_shards
from tests.drills.harness import Job, compare_positions
from tests.drills.outages import DAMAGED_SHARDS, cut, shard_damage
from tests.drills.setup import GZ_SHARD, drill_data, drill_sources

STEPS = 10


def run_ranks(sources, steps: int, state: dict | None = None, **settings) -> tuple[list, dict]:
    """Per step and rank, (position → key of good rows, position → url of holes); and the loader state after."""
    out, last = [], None
    loaders = [make_loader(sources, rank=r, world=2, num_streams=4, window=4, **settings) for r in (0, 1)]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
    iters = [iter(loader) for loader in loaders]
    for _ in range(steps):
        per_rank = []
        for loader, it in zip(loaders, iters):
            good, holes = {}, {}
            for _ in range(loader.accum_steps):
                batch = next(it)
                good.update({m["position"]: k for k, m in zip(batch["keys"], batch["meta"])})
                holes.update({h["position"]: h["url"].rsplit("/", 1)[-1] for h in batch["holes"]})
            per_rank.append((good, holes))
        out.append(per_rank)
        last = loaders[0].state_dict()
    return out, last


def check_against(reference: list, got: list, readable: dict[str, set[str]]) -> None:
    """Every position holds the reference's sample, or (only if that sample's shard was damaged and the sample is
    no longer readable) a hole naming that shard; no position is missing, none extra."""
    for step, (ref_ranks, got_ranks) in enumerate(zip(reference, got)):
        for rank, ((ref_good, _), (good, holes)) in enumerate(zip(ref_ranks, got_ranks)):
            assert set(good) | set(holes) == set(ref_good), (step, rank)
            for position, key in good.items():
                assert ref_good[position] == key, (step, rank, position)
            for position, shard in holes.items():
                key = ref_good[position]
                assert shard in readable and key not in readable[shard], (step, rank, position, key, shard)


def readable_keys(path) -> set[str]:
    with open(path, "rb") as f:
        return {s["__key__"] for s in iter_tar_samples(f, str(path), on_error=lambda *a: None)}


def test_damage_at_several_points_moves_no_other_sample(tmp_path):
    """2 ranks: a shard deleted before the start, another cut short at a resume, a third cut short while a loader
    worker reads it. Each position still holds the uninterrupted run's sample, or a hole for a sample that is gone.

    Shown to fail on a broken build: with `StreamReader` filling a cut shard's lost positions with copies of its
    last good sample instead of holes, a position after the cut held another sample (p_002_0007 for p_002_0005)."""
    urls = write_shards(tmp_path / "shards", "p", 4, 12)
    sources = [Source("p", "image_text", 1.0, read_manifest(str(tmp_path / "shards" / "manifest.json")))]
    reference, _ = run_ranks(sources, STEPS)

    (tmp_path / "shards" / "p-00001.tar").unlink()  # before the start
    first, state = run_ranks(sources, 4)
    check_against(reference[:4], first, {"p-00001.tar": set()})

    cut(tmp_path / "shards" / "p-00002.tar", 0.5)  # between the stop and the resume
    readable = {"p-00001.tar": set(), "p-00002.tar": readable_keys(urls[2])}
    resumed, _ = run_ranks(sources, STEPS - 4, state)
    check_against(reference[4:], resumed, readable)

    live = make_loader(sources, rank=0, world=2, num_streams=4, window=4, num_workers=1)
    it = iter(live)
    got = []
    for step in range(STEPS):
        if step == 2:
            cut(tmp_path / "shards" / "p-00000.tar", 0.4)  # while the worker reads ahead
        good, holes = {}, {}
        for _ in range(live.accum_steps):
            batch = next(it)
            good.update({m["position"]: k for k, m in zip(batch["keys"], batch["meta"])})
            holes.update({h["position"]: h["url"].rsplit("/", 1)[-1] for h in batch["holes"]})
        got.append([(good, holes), reference[step][1]])
    readable["p-00000.tar"] = readable_keys(urls[0])
    check_against(reference, got, readable)


def test_a_cut_gzipped_shard_without_manifest_is_counted_flagged_and_trained_on(reference, drill_dir):
    """The reference run itself: a GNU-tar gzipped shard cut short and no manifest. The run counted what reads,
    flagged the shard in the manifest it wrote, warned, and trained to the end.

    Shown to fail on a broken build: with `describe_shard` raising on the cut shard (as before), the reference
    run aborted while counting ("corrupt or truncated tar")."""
    manifest = read_manifest(str(drill_dir / "manifest.json"))
    by_name = {s.url.rsplit("/", 1)[-1]: s for s in manifest.shards}
    gz = by_name[GZ_SHARD]
    assert gz.damaged and "truncated" in gz.damaged and 0 < gz.num_samples < 32
    assert gz.num_samples == len(readable_keys(drill_dir / GZ_SHARD))
    assert all(s.damaged is None for name, s in by_name.items() if name != GZ_SHARD)
    log = "".join(p.read_text() for p in reference.folder.glob("*.log"))
    assert f"{GZ_SHARD} is damaged" in log and "training on the" in log
    assert reference.last_step() == reference.max_steps


def test_strict_mode_refuses_the_cut_shard(demo_dir, tmp_path):
    """`data.strict true`: the cut shard is a DataError (exit 1) naming it, before any step."""
    from open_vlm.config.schema import SourceConfig

    data = drill_data(demo_dir, tmp_path / "strict")
    source = SourceConfig(**drill_sources(data)[0])
    with pytest.raises(DataError, match=f"{GZ_SHARD}: corrupt or truncated tar.*data.strict is on") as caught:
        source_manifest(source, strict=True)
    assert caught.value.exit_code == 1
    assert not (data / "manifest.json").exists()


@pytest.mark.slow
def test_shards_damaged_during_a_run(reference, tmp_path, drill_dir):
    """torchrun, 2 ranks: a shard cut after the manifest was written, another cut between a kill and the resume, a
    third deleted while the run reads. The run ends (exit 0); every step processes the reference's rows and every
    checkpoint's data position equals the uninterrupted run's; the samples lost are counted as bad (more than none,
    at most the positions read in the damaged shards: since the integration branch `samples_seen` counts rows
    processed, a bad sample's invalid copy included, so it no longer tells what was trained on).

    Shown to fail on a broken build: with `StreamReader` turning a failed shard open into an exception instead of
    holes, the resumed run stopped at the deleted shard (exit 1)."""
    data = tmp_path / "data"
    shutil.copytree(drill_dir, data, ignore=shutil.ignore_patterns("*.index.npz"))  # its index names the originals
    job = Job(tmp_path, data, "shards")
    outcomes = shard_damage(job, random.Random(3))
    lost = compare_positions(reference, job, DAMAGED_SHARDS)
    assert all(o.ok for o in outcomes) and not lost, [o.line() for o in outcomes] + lost
