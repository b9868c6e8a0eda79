"""Issue 16, done (2): captions + VQA + text-only sources (0.5 / 0.3 / 0.2) in one PaliGemma run under torchrun
(2 gloo ranks, DDP), killed and resumed: the losses equal the uninterrupted run's, and the checkpoint's consumed
record lists the shards of all three sources."""

import json

import pytest

from tests.checkpoint.test_resume import kill_and_resume
from tests.conftest import run_cli
from tests.trainer.runs import folder, metrics


def mixture_sources(mixture_dir, text_task=""):
    return [
        {"name": "captions", "urls": [str(mixture_dir / "demo-{000000..000001}.tar")], "weight": 0.5},
        {"name": "vqa", "urls": [str(mixture_dir / "vqa" / "vqa-{000000..000001}.tar")], "weight": 0.3},
        {
            "name": "text",
            "urls": [str(mixture_dir / "text" / "text-{000000..000001}.tar")],
            "weight": 0.2,
            "modality": "text",
            "task": text_task,
        },
    ]


@pytest.mark.slow
def test_mixture_resumes_exactly_under_torchrun(tmp_path, mixture_dir):
    ckpt = tmp_path / "ckpt"
    kill_and_resume(
        tmp_path,
        mixture_dir,  # its tokenizer knows the questions and the text
        "mix",
        str(ckpt),
        train={"strategy": "ddp"},
        data={"sources": mixture_sources(mixture_dir, text_task="causal_lm"), "num_workers": 1},
    )
    steps = metrics(tmp_path, "mix")
    assert all(m["bad_samples"] == 0 for m in steps)
    out = run_cli("-m", "open_vlm.cli", "view", str(ckpt / "step_00000012"), "--json")
    assert out.returncode == 0, out.stderr
    consumed = json.loads(out.stdout)["consumed"]
    folders = {entry["url"].rsplit("/", 2)[-2] for entry in consumed if entry["samples_read"]}
    assert {mixture_dir.name, "vqa", "text"} <= folders, consumed
    log = next(folder(tmp_path, "mix").glob("*-train-*.log")).read_text()
    assert "task causal_lm: source(s) text" in log and "task prefix_lm: source(s) captions, vqa" in log


@pytest.mark.slow
def test_mixture_trains_under_fsdp_with_text_rows_in_prefix_lm(tmp_path, mixture_dir):
    """FSDP2 with text-only steps (the vision tower still runs, at weight zero, on every rank) and text documents
    under the model's own task; the held-out VQA source is scored alongside (not under fsdp: loss only)."""
    from tests.trainer.runs import train, write_config

    heldout = [{"name": "heldout", "urls": [str(mixture_dir / "vqa" / "vqa-000001.tar")]}]
    config = write_config(
        tmp_path,
        mixture_dir,
        "fsdp",
        train={"strategy": "fsdp", "max_steps": 8},
        data={"sources": mixture_sources(mixture_dir), "num_streams": 4},
        eval={"every_steps": 8, "max_batches": 1, "sources": heldout},
    )
    out = train(config, procs=2)
    assert "task prefix_lm: source(s) captions, vqa, text" in out.stderr
    steps = metrics(tmp_path, "fsdp")
    assert [m["step"] for m in steps] == list(range(1, 9)) and all(m["bad_samples"] == 0 for m in steps)
    assert "eval_loss" in steps[-1] and "eval_vqa_accuracy" not in steps[-1]
    out = run_cli(
        "-m", "open_vlm.cli", "view", str(folder(tmp_path, "fsdp") / "checkpoints" / "step_00000008"), "--json"
    )
    read = {entry["url"].rsplit("/", 2)[-2] for entry in json.loads(out.stdout)["consumed"] if entry["samples_read"]}
    assert "text" in read  # some steps were text-only
