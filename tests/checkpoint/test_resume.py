"""Exact and elastic resume under real torchrun (2 gloo ranks), local and on S3."""

import shutil

import fsspec
import pytest
import s3fs
import torch

from open_vlm.checkpoint.checkpointer import Checkpointer
from open_vlm.checkpoint.model_io import load_model_from_checkpoint
from tests.trainer.runs import finish, folder, metrics, start, train, train_until_killed, write_config

EXACT_KEYS = ("loss", "lr", "grad_norm", "samples_seen", "tokens_seen")


def two_sources(demo_dir):
    urls = str(demo_dir / "demo-{000000..000003}.tar")
    return [
        {"name": "shapes_a", "urls": [urls], "weight": 0.7},
        {"name": "shapes_b", "urls": [urls], "weight": 0.3},
    ]


def assert_same_steps(reference, resumed, steps):
    ref = {m["step"]: m for m in reference}
    got = {m["step"]: m for m in resumed}
    assert sorted(got) == sorted(ref)
    for step in steps:
        for key in EXACT_KEYS:
            assert got[step][key] == ref[step][key], (step, key, got[step][key], ref[step][key])


def kill_and_resume(tmp, demo_dir, name, ckpt_dir, procs=2, **sections):
    """Uninterrupted run vs SIGKILL after step 6 + resume from step 4 (12 steps, checkpoints every 4)."""
    sections.setdefault("train", {}).update(max_steps=12)
    sections.setdefault("checkpoint", {}).update(every_steps=4)
    full = write_config(tmp, demo_dir, name + "_full", **sections)
    train(full, procs=procs)
    sections["checkpoint"] = {**sections["checkpoint"], "dir": ckpt_dir}
    config = write_config(tmp, demo_dir, name, **sections)
    train_until_killed(config, folder(tmp, name) / "metrics.jsonl", 6, procs=procs)
    checkpointer = Checkpointer(ckpt_dir)
    for step, url in checkpointer.list_complete():  # as if the crash came right after step 4's save
        if step > 4:
            fs, path = fsspec.core.url_to_fs(url)
            fs.rm(path, recursive=True)
    assert [s for s, _ in checkpointer.list_complete()] == [4]
    out = train(config, procs=procs)
    assert "resumed from" in out.stderr and "step_00000004" in out.stderr
    assert_same_steps(metrics(tmp, name + "_full"), metrics(tmp, name), range(1, 13))


@pytest.mark.slow
def test_exact_resume_ddp_two_sources(tmp_path, demo_dir):
    kill_and_resume(
        tmp_path,
        demo_dir,
        "ddp",
        str(tmp_path / "ckpt_ddp"),
        train={"strategy": "ddp"},
        data={"sources": two_sources(demo_dir), "num_workers": 1},
    )


@pytest.mark.slow
def test_exact_resume_with_augmentation(tmp_path, demo_dir):
    """Both sources augmented (a recipe with RandAugment, settings with crop, flip and noise), with a loader
    worker: the resumed run draws the very same augmentation, so its losses equal the uninterrupted run's."""
    sources = two_sources(demo_dir)
    sources[0]["augment"] = "strong"
    sources[1]["augment"] = {"crop_scale": [0.5, 1.0], "flip": True, "noise_std": 0.05}
    kill_and_resume(
        tmp_path,
        demo_dir,
        "aug",
        str(tmp_path / "ckpt_aug"),
        train={"strategy": "ddp"},
        data={"sources": sources, "num_workers": 1},
    )
    log = next((folder(tmp_path, "aug")).glob("t-train-*.log")).read_text()
    assert "data.sources[0] (shapes_a): augmenting images with" in log and "noise_std=0.05" in log


@pytest.mark.slow
def test_exact_resume_on_s3_with_fp16_fsdp(tmp_path, demo_dir, s3_bucket):
    kill_and_resume(
        tmp_path,
        demo_dir,
        "s3",
        f"s3://{s3_bucket}/run/checkpoints",
        train={"strategy": "fsdp", "precision": "fp16"},
        data={"sources": two_sources(demo_dir)},
    )
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow
def test_elastic_resume_2_to_1_and_3(tmp_path, demo_dir):
    base = {"train": {"strategy": "ddp", "max_steps": 3, "global_batch_size": 12}, "data": {"batch_size": 2}}
    config = write_config(tmp_path, demo_dir, "elastic", **base, checkpoint={"dir": str(tmp_path / "ck2")})
    train(config, procs=2)
    saved_step, saved = Checkpointer(str(tmp_path / "ck2")).list_complete()[-1]
    reference = load_model_from_checkpoint(saved)[0].model.state_dict()
    for procs, strategy in ((1, "single"), (3, "fsdp")):
        ckdir = tmp_path / f"ck{procs}"
        shutil.copytree(tmp_path / "ck2", ckdir)
        name = f"elastic{procs}"
        cfg = write_config(
            tmp_path,
            demo_dir,
            name,
            train={**base["train"], "strategy": strategy, "max_steps": 5},
            data=base["data"],
            checkpoint={"dir": str(ckdir), "every_steps": 0},
        )
        out = train(cfg, procs=procs)
        assert f"resumed from {ckdir}/step_{saved_step:08d}" in out.stderr
        steps = [m["step"] for m in metrics(tmp_path, name)]
        assert steps == [4, 5]
        assert metrics(tmp_path, name)[-1]["samples_seen"] == 5 * 12
    # The state loaded at another world size is the saved one, bit for bit.
    from open_vlm.checkpoint.dcp_io import load_model_weights

    model = load_model_from_checkpoint(saved)[0].model
    for p in model.parameters():
        p.data.zero_()
    load_model_weights(saved, model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


# --- checkpoint.fallback past a checkpoint that passes its size check but does not load ------------------------
def _four_steps(tmp_path, demo_dir, name):
    config = write_config(
        tmp_path,
        demo_dir,
        name,
        train={"seed": 0, "max_steps": 4, "global_batch_size": 8},
        checkpoint={"every_steps": 2},
    )
    train(config)
    return config, folder(tmp_path, name) / "checkpoints"


def _zeroed_head(path, n=64):
    data = path.read_bytes()
    path.write_bytes(b"\x00" * n + data[n:])  # same size: the cheap check on resume passes it


@pytest.mark.slow
def test_fallback_resume_applies_this_runs_optimizer_settings(tmp_path, demo_dir):
    """Resume with a changed optim.lr (allow_config_change) while the newest checkpoint's extra.pt is garbled.

    The failed attempt loads step 4's optimizer (its param groups) before extra.pt fails; the resume from step 2
    must still apply this run's settings, not those the failed load left (it trained at the old lr 0.003)."""
    config, ckpts = _four_steps(tmp_path, demo_dir, "lr")
    _zeroed_head(ckpts / "step_00000004" / "extra.pt")
    overrides = ("--train.max_steps", "6", "--optim.lr", "1e-3", "--checkpoint.allow_config_change", "true")
    status, err = finish(start(config, *overrides))
    assert status == 0, err[-3000:]
    assert "resuming from" in err and "step_00000002" in err, err[-3000:]
    step3 = next(m for m in metrics(tmp_path, "lr") if m.get("step") == 3 and "lr" in m)
    # warmup is over by step 3: an explicit resume from step 2 with the same overrides logs lr 0.001 here
    assert step3["lr"] == pytest.approx(1e-3), f"fallback resume trained at lr {step3['lr']}, config says 1e-3"


@pytest.mark.slow
def test_a_garbled_metadata_file_is_passed_over_with_fallback(tmp_path, demo_dir):
    """`.metadata` garbled in place (same size): damage like a garbled extra.pt, passed over for step 2 by
    checkpoint.fallback (default true). It was refused as an UnsafeCheckpoint (exit 1): garbage is no payload."""
    config, ckpts = _four_steps(tmp_path, demo_dir, "meta")
    _zeroed_head(ckpts / "step_00000004" / ".metadata")
    status, err = finish(start(config, "--train.max_steps", "6"))
    assert status == 0, err[-2000:]
    assert "step_00000002" in err


@pytest.mark.slow
def test_a_transient_read_error_does_not_roll_the_run_back(tmp_path, demo_dir, monkeypatch):
    """A storage error while loading (a connection reset, EIO, out of memory: the files intact) stops the resume
    (a relaunch retries); it is no damage, so checkpoint.fallback must not roll back past a good checkpoint (it set
    step 4 aside and trained its steps again)."""
    import open_vlm.checkpoint.checkpointer as checkpointer
    from open_vlm.train import main

    config, ckpts = _four_steps(tmp_path, demo_dir, "blip")
    real = checkpointer.torch_load
    failed = []

    def flaky(url):
        if "step_00000004/extra.pt" in url and not failed:
            failed.append(url)
            raise ConnectionResetError(104, "Connection reset by peer")
        return real(url)

    monkeypatch.setattr(checkpointer, "torch_load", flaky)
    status = main(["--config", str(config), "--train.max_steps", "6"])
    assert failed, "the flaky read was not reached"
    assert status != 0 or (ckpts / "step_00000004").exists() and not (ckpts / "abandoned").exists(), (
        f"exit {status}: a one-off read error rolled the run back to step 2 and set step 4 aside: "
        f"{sorted(p.name for p in (ckpts / 'abandoned').iterdir())}"
    )


ONE_RANK_FAULT = """
import os, sys
import open_vlm.checkpoint.dcp_safe as ds
real = ds._SafeMetadata.read_metadata
failed = []
def flaky(self, *a, **k):
    if os.environ.get("RANK") == "1" and "step_00000004" in str(self.path) and not failed:
        failed.append(1)
        raise OSError(5, "Input/output error (injected, rank 1 only)")
    return real(self, *a, **k)
ds._SafeMetadata.read_metadata = flaky
from open_vlm.errors import run_main
from open_vlm.train import main
sys.exit(run_main(main))
"""


@pytest.mark.slow
def test_a_read_error_on_one_rank_before_the_dcp_load_does_not_hang(tmp_path, demo_dir):
    """Rank 1 alone fails to read step 4's .metadata: every rank stops together, naming it (rank 1 waited for an
    agreement while rank 0 was in DCP's collective load on the same group: hung until the group's timeout)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.trainer.runs import ENV, TORCHRUN, kill_tree

    config = write_config(
        tmp_path,
        demo_dir,
        "onerank",
        train={"seed": 0, "max_steps": 4, "global_batch_size": 8, "strategy": "ddp"},
        checkpoint={"every_steps": 2},
    )
    train(config, procs=2)
    script = tmp_path / "fault.py"
    script.write_text(ONE_RANK_FAULT)
    proc = subprocess.Popen(
        [
            sys.executable,
            *TORCHRUN,
            "--nproc_per_node=2",
            str(script),
            "--config",
            str(config),
            "--train.max_steps",
            "6",
        ],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.communicate()
        pytest.fail("the resume hung: rank 1 in comm.any, rank 0 in dcp.load, on the checkpoint group")
    assert proc.returncode is not None, err[-2000:]


# Faults on rank 1 only, at the other steps of a load: after DCP's collective load, and from a store's own client.
LATE_FAULTS = {
    "set_state_dict": """
import open_vlm.checkpoint.dcp_io as target
real = target.set_state_dict
def fault(*a, **k):
    raise RuntimeError("CUDA out of memory (injected, rank 1 only)")
target.set_state_dict = fault
""",
    "client_error": """
import botocore.exceptions
import open_vlm.checkpoint.checkpointer as target
real = target.torch_load
def fault(url):
    if url.endswith("extra.pt"):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://store (injected, rank 1 only)")
    return real(url)
target.torch_load = fault
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("where", sorted(LATE_FAULTS))
def test_a_storage_fault_on_one_rank_stops_every_rank_naming_it(tmp_path, demo_dir, where):
    """Rank 1 alone fails after DCP's load (an OOM) or in its store client (botocore): rank 0 stops too, with the
    same storage error naming rank 1, and neither falls back past the good checkpoint. (Rank 0 waited in the next
    agreement until rank 1 died, then took the lost peer for damage, or another error altogether.)"""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.trainer.runs import ENV, TORCHRUN

    config = write_config(
        tmp_path,
        demo_dir,
        "late",
        train={"seed": 0, "max_steps": 4, "global_batch_size": 8, "strategy": "ddp"},
        checkpoint={"every_steps": 2},
    )
    train(config, procs=2)
    script = tmp_path / "fault.py"
    script.write_text(
        "import os, sys\nif os.environ.get('RANK') == '1':\n"
        + "".join(f"    {line}\n" for line in LATE_FAULTS[where].strip().splitlines())
        + "from open_vlm.errors import run_main\nfrom open_vlm.train import main\nsys.exit(run_main(main))\n"
    )
    done = subprocess.run(
        [sys.executable, *TORCHRUN, "--nproc_per_node=2", str(script), "--config", str(config)]
        + ["--train.max_steps", "6"],
        cwd=REPO,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = done.stderr
    assert done.returncode != 0, err[-2000:]
    rank0 = [line for line in err.splitlines() if "[rank0]" in line and "reading it failed on rank 1" in line]
    assert rank0, err[-3000:]
    assert "resuming from" not in err and (folder(tmp_path, "late") / "checkpoints" / "step_00000004").exists()
