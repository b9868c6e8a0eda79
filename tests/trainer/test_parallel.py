"""Single vs DDP vs FSDP2 (real torchrun, 2 gloo ranks) and gradient accumulation: the same training."""

import os
import subprocess
import sys

import pytest
import torch

from open_vlm.checkpoint.model_io import load_model_from_checkpoint
from tests.conftest import REPO
from tests.trainer.runs import ENV, TORCHRUN, folder, metrics, train, write_config

LAYOUTS = {
    # name: (processes, strategy, micro batch) with a global batch of 8
    "single_8x1": (1, "single", 8),
    "single_4x2": (1, "single", 4),
    "ddp_2x2x2": (2, "ddp", 2),
    "fsdp_2x2x2": (2, "fsdp", 2),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_dir):
    tmp = tmp_path_factory.mktemp("parallel")
    for name, (procs, strategy, micro) in LAYOUTS.items():
        config = write_config(
            tmp, demo_dir, name, train={"strategy": strategy, "max_steps": 5}, data={"batch_size": micro}
        )
        train(config, procs=procs)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in LAYOUTS if n != "single_8x1"])
def test_same_losses_grads_and_weights(runs, name):
    reference, other = metrics(runs, "single_8x1"), metrics(runs, name)
    assert [m["step"] for m in other] == [1, 2, 3, 4, 5]
    for a, b in zip(reference, other):
        assert a["samples_seen"] == b["samples_seen"]
        assert abs(a["loss"] - b["loss"]) < 1e-5, (name, a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5, (name, a["step"])
    ref_model = load_model_from_checkpoint(str(folder(runs, "single_8x1")))[0].model.state_dict()
    got_model = load_model_from_checkpoint(str(folder(runs, name)))[0].model.state_dict()
    assert ref_model.keys() == got_model.keys()
    for key in ref_model:
        torch.testing.assert_close(got_model[key], ref_model[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_losses_actually_differ_with_another_seed(runs, demo_dir):
    """The comparison above can fail: a different data order gives different losses."""
    config = write_config(runs, demo_dir, "other_seed", train={"max_steps": 2, "seed": 1}, data={"batch_size": 8})
    train(config)
    assert abs(metrics(runs, "other_seed")[0]["loss"] - metrics(runs, "single_8x1")[0]["loss"]) > 1e-4


@pytest.mark.slow
def test_bf16_under_fsdp2(tmp_path, demo_dir):
    config = write_config(tmp_path, demo_dir, "bf16", train={"strategy": "fsdp", "precision": "bf16", "max_steps": 3})
    train(config, procs=2)
    losses = [m["loss"] for m in metrics(tmp_path, "bf16")]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)


# What the interpreter's exit meets once `main` returned. gc stays off so that no collection by chance hides what
# is left: a gloo group still alive then has its threads torn down by the exit, and a gloo thread that needs the
# GIL then aborts the process ("terminate called without an active exception") after a run that succeeded.
EXIT_PROBE = """
import gc, os, sys
gc.disable()
from open_vlm.train import main
status = main(sys.argv[1:])
threads = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
gloo = [name for name in threads if "gloo" in name]
print(f"gloo threads left when main returned: {gloo}", file=sys.stderr)
sys.exit(status or (3 if gloo else 0))
"""


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_no_process_group_outlives_main(tmp_path, demo_dir, strategy):
    """Every process group (the strategy's and the checkpoint group) is gone, its threads joined, when main returns."""
    config = write_config(
        tmp_path, demo_dir, strategy, train={"strategy": strategy, "max_steps": 2}, checkpoint={"every_steps": 1}
    )
    probe = tmp_path / "probe.py"
    probe.write_text(EXIT_PROBE)
    done = subprocess.run(
        [sys.executable, *TORCHRUN, "--nproc_per_node=2", str(probe), "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("gloo threads left when main returned: []") == 2, done.stderr[-3000:]
