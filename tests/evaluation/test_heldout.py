"""Held-out loss / perplexity: during training (eval.every_steps) and from `open-vlm eval --checkpoint`."""

import json
import math

import torch

from open_vlm.evaluation.heldout import recall_at_k
from tests.conftest import run_cli
from tests.trainer.runs import ENV, folder, metrics, train, write_config


def test_eval_during_training_and_from_the_cli_agree(tmp_path, demo_dir):
    held_out = [{"name": "held_out", "urls": [str(demo_dir / "demo-000003.tar")]}]
    train_on = [{"name": "shapes", "urls": [str(demo_dir / "demo-{000000..000002}.tar")]}]
    config = write_config(
        tmp_path,
        demo_dir,
        "ev",
        data={"sources": train_on},
        train={"max_steps": 6},
        eval={"every_steps": 3, "sources": held_out, "max_batches": 2},
    )
    train(config, "--logging.every_steps", "100")
    lines = metrics(tmp_path, "ev")
    evaluated = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evaluated] == [3, 6]
    for m in evaluated:
        assert m["eval_perplexity"] == math.exp(m["eval_loss"])
    assert evaluated[1]["eval_loss"] < evaluated[0]["eval_loss"]  # the model learns what generalises

    out = run_cli(
        "-m",
        "open_vlm.cli",
        "eval",
        "--config",
        str(config),
        "--checkpoint",
        str(folder(tmp_path, "ev")),
        "--eval.max_batches",
        "2",
        "--run.name",
        "ev_cli",
        env=ENV,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((folder(tmp_path, "ev_cli") / "eval-loss.json").read_text())
    assert abs(report["eval_loss"] - evaluated[-1]["eval_loss"]) < 1e-5  # same model, same held-out batches


def test_eval_needs_a_checkpoint(tmp_path):
    out = run_cli("-m", "open_vlm.cli", "eval", "--eval.kind", "loss", "--run.output_dir", str(tmp_path), env=ENV)
    assert out.returncode == 2 and "checkpoint" in out.stderr


def test_recall_at_k_by_hand():
    image = torch.eye(4)
    text = torch.eye(4)[[0, 1, 3, 2]]  # pairs 2 and 3 swapped
    r = recall_at_k(image, text, ks=(1, 2))
    assert r["image_to_text_r@1"] == 0.5 and r["image_to_text_r@2"] == 1.0  # the swapped ones rank second
    text = torch.nn.functional.normalize(0.4 * torch.eye(4)[[0, 1, 3, 2]] + torch.eye(4), dim=-1)
    r = recall_at_k(image, text, ks=(1, 2))
    assert r["image_to_text_r@1"] == 1.0 and r["text_to_image_r@1"] == 1.0
