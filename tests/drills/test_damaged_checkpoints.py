"""Drill: checkpoints damaged after their commit (a cut `.distcp`, a missing `data.json`, an unreadable `meta.json`,
bytes changed in place). `resume latest` names each bad one and why, falls back to the newest good one and ends as
the uninterrupted run did; `checkpoint.fallback false` refuses instead; `open-vlm view --verify` finds them all."""

import json
import shutil

import pytest

from open_vlm.checkpoint.checkpointer import CheckpointDamaged, Checkpointer
from tests.conftest import run_cli
from tests.drills.harness import Job, checkpoints_verify, compare, finish_job
from tests.drills.outages import damage
from tests.trainer.runs import ENV


@pytest.fixture
def copied(reference, tmp_path):
    """A copy of the reference run folder (its checkpoints of steps 3..24)."""
    job = Job(tmp_path, reference.data, "fallback")
    shutil.copytree(reference.folder, job.folder)
    (job.folder / "config.yaml").unlink()
    return job


@pytest.mark.slow
def test_resume_latest_falls_back_past_damaged_checkpoints(reference, copied):
    """Steps 24, 21 and 18 damaged: the resume names each and why, continues from 15, and steps 16-24, the consumed
    records and the final weights equal the reference's; the damaged ones are set aside.

    Shown to fail on a broken build (checked 2026-11-23, checkpointer.py edited by hand, then reverted): with
    `latest_good` taking the newest committed checkpoint unchecked (`problems = []` for its size check), the resume
    took step 24 and failed reading its cut shard (exit 1, "PytorchStreamReader failed reading zip archive")."""
    ckpts = copied.folder / "checkpoints"
    damaged = {24: "cut distcp", 21: "no data.json", 18: "garbled meta.json"}
    for step, what in damaged.items():
        damage(ckpts, what, step)
    outcome = finish_job(copied)
    log = "".join(p.read_text() for p in copied.folder.glob("*.log"))
    assert outcome.ok, outcome.line() + log[-3000:]
    assert "__0_0.distcp" in log.split("step_00000024 is damaged: ")[1].splitlines()[0]
    assert "data.json: missing" in log.split("step_00000021 is damaged: ")[1].splitlines()[0]
    assert "meta.json: unreadable" in log.split("step_00000018 is damaged: ")[1].splitlines()[0]
    assert f"resuming from {ckpts}/step_00000015, the newest good checkpoint" in log
    assert len(list((ckpts / "abandoned").iterdir())) == 3
    lost = compare(reference, copied) + checkpoints_verify(copied)
    assert not lost, lost


@pytest.mark.slow
def test_a_checkpoint_that_passes_its_size_check_but_cannot_be_loaded_is_passed_over(reference, copied):
    """Step 24's extra.pt garbled in place (same size): the cheap check on resume passes it, loading fails. With
    `checkpoint.fallback` every rank passes it over together, resumes from step 21 and ends as the reference did;
    without, the resume stops in one line naming it."""
    ckpts = copied.folder / "checkpoints"
    damage(ckpts, "garbled extra.pt", 24)
    refused = finish_job(copied, "--checkpoint.fallback", "false")
    log = "".join(p.read_text() for p in copied.folder.glob("*.log"))
    assert not refused.ok and f"checkpoint {ckpts}/step_00000024 cannot be read" in log, refused.line()
    outcome = finish_job(copied)
    log = "".join(p.read_text() for p in copied.folder.glob("*.log"))
    assert outcome.ok, outcome.line() + log[-3000:]
    assert "step_00000024 is damaged: cannot be read" in log
    assert f"resuming from {ckpts}/step_00000021, the newest good checkpoint" in log
    lost = compare(reference, copied) + checkpoints_verify(copied)
    assert not lost, lost


def test_without_fallback_the_damaged_latest_is_refused(reference, copied):
    ckpts = copied.folder / "checkpoints"
    damage(ckpts, "no data.json", 24)
    with pytest.raises(CheckpointDamaged, match=r"step_00000024 is damaged: data.json: missing.*checkpoint.fallback"):
        Checkpointer(str(ckpts)).latest_good(fallback=False)
    assert Checkpointer(str(ckpts)).latest_good(fallback=True).endswith("step_00000021")


def test_view_verify_finds_every_damaged_file(reference, copied):
    """`open-vlm view CKPT --verify` exits 0 on a good checkpoint and 1 naming each damaged file, checksums
    included (bytes changed in place keep the size: the cheap check on resume does not see them, --verify does).

    Shown to fail on a broken build: with the checksums left out of the commit record, the changed bytes passed."""
    ckpts = copied.folder / "checkpoints"
    good = run_cli("-m", "open_vlm.cli", "view", str(ckpts / "step_00000003"), "--verify", env=ENV)
    assert good.returncode == 0 and ": ok" in good.stdout, good.stdout + good.stderr
    for step, what in {24: "cut distcp", 21: "no data.json", 18: "garbled meta.json", 15: "bytes changed"}.items():
        damage(ckpts, what, step)
    assert Checkpointer(str(ckpts)).latest_good(fallback=True).endswith("step_00000015")  # size-only on resume
    out = run_cli("-m", "open_vlm.cli", "view", str(copied.folder), "--verify", "--json", env=ENV)
    assert out.returncode == 1, out.stderr
    report = {c["url"].rsplit("/", 1)[-1]: c["problems"] for c in json.loads(out.stdout)["checkpoints"]}
    assert report["step_00000024"][0].startswith("__0_0.distcp: ") and "when committed" in report["step_00000024"][0]
    assert report["step_00000021"] == ["data.json: missing"]
    assert report["step_00000018"][0].startswith("meta.json: contents changed")
    assert report["step_00000015"][0].endswith("contents changed since the commit (sha256 differs)")
    assert not any(report[f"step_{s:08d}"] for s in (3, 6, 9, 12))
