"""`train.epochs`: the step count from the sources' sizes and weights; a run that ends exactly after one pass."""

import json

import pytest

from open_vlm.data.plan import Planner
from open_vlm.trainer.epochs import steps_for_epochs
from tests.trainer.runs import folder, metrics, write_config


def positions_after(steps, weights, global_batch, group, seed):
    planner = Planner(weights, seed, global_batch, group)
    state = planner.initial()
    for _ in range(steps):
        planner.next_step(state)
    return state.positions


def test_one_source_one_epoch_is_its_size_over_the_batch():
    assert steps_for_epochs([128], [1.0], 1, 8, 8, 0).steps == 16
    assert steps_for_epochs([128], [1.0], 2.5, 8, 8, 0).steps == 40
    assert steps_for_epochs([130], [1.0], 1, 8, 8, 0).steps == 17  # rounded up to whole steps


@pytest.mark.parametrize("mixing_group", [10, 2])  # data.mixing batch (group = G) and sample
def test_every_source_passes_at_the_count_and_not_a_step_before(mixing_group):
    counts, weights, seed = [100, 30, 45], [0.5, 0.2, 0.3], 7
    plan = steps_for_epochs(counts, weights, 1, 10, mixing_group, seed)
    assert plan.exact
    done = positions_after(plan.steps, weights, 10, mixing_group, seed)
    assert all(p >= n for p, n in zip(done, counts))
    before = positions_after(plan.steps - 1, weights, 10, mixing_group, seed)
    assert any(p < n for p, n in zip(before, counts))
    assert plan.passes == [p / n for p, n in zip(done, counts)]
    assert min(plan.passes) >= 1.0


def test_a_plan_too_long_to_walk_gives_an_upper_bound(monkeypatch):
    import open_vlm.trainer.epochs as epochs

    monkeypatch.setattr(epochs, "MAX_SIMULATED_GROUPS", 10)
    counts, weights = [100, 30], [0.7, 0.3]
    plan = steps_for_epochs(counts, weights, 1, 10, 10, 0)
    assert not plan.exact
    done = positions_after(plan.steps, weights, 10, 10, 0)
    assert all(p >= n for p, n in zip(done, counts))


def test_a_run_with_epochs_1_ends_exactly_after_one_pass(tmp_path, demo_dir):
    from open_vlm.train import main

    one_shard = {"name": "one", "urls": [str(demo_dir / "demo-000001.tar")]}  # 32 samples, 8 per step
    config = write_config(tmp_path, demo_dir, "epoch", data={"sources": [one_shard]}, train={"epochs": 1})
    assert main(["--config", str(config)]) == 0  # write_config's train.max_steps 6 gives way to the epoch
    (log_file,) = folder(tmp_path, "epoch").glob("t-train-*.log")
    assert "train.epochs 1: 4 steps" in log_file.read_text()
    lines = metrics(tmp_path, "epoch")
    assert [m["step"] for m in lines] == [1, 2, 3, 4] and lines[-1]["samples_seen"] == 32
    meta = json.loads((folder(tmp_path, "epoch") / "checkpoints/step_00000004/meta.json").read_text())
    (consumed,) = meta["consumed"]
    assert (consumed["epochs_complete"], consumed["samples_read"]) == (1, 0)  # every sample once, none twice
