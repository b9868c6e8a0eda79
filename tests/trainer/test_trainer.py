"""The trainer in process: fp16 + grad scaler overflow handling; SIGTERM → checkpoint and exit 0."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from open_vlm.checkpoint.checkpointer import Checkpointer
from open_vlm.config.load import load_run_config
from tests.conftest import REPO
from tests.trainer.runs import (
    ENV,
    descendants,
    finish,
    folder,
    kill_tree,
    metrics,
    start,
    wait_for_steps,
    write_config,
    write_lxmert_config,
)


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path, demo_dir):
    from open_vlm.trainer.loop import Trainer

    config = write_config(tmp_path, demo_dir, "fp16", train={"precision": "fp16", "max_steps": 4})
    cfg = load_run_config(["--config", str(config)])
    trainer = Trainer(cfg, folder(tmp_path, "fp16"))
    assert trainer.scaler is not None
    batches = iter(trainer.loader)
    trainer.train_step([next(batches) for _ in range(trainer.loader.accum_steps)])  # a normal step

    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    scale = trainer.scaler.get_scale()
    victim = next(p for p in trainer.model.parameters() if p.requires_grad)
    handle = victim.register_hook(lambda g: torch.full_like(g, float("inf")))
    result = trainer.train_step([next(batches) for _ in range(trainer.loader.accum_steps)])
    handle.remove()
    assert result.skipped
    assert trainer.scaler.get_scale() < scale
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), params[name]), f"{name} changed in a skipped step"

    result = trainer.train_step([next(batches) for _ in range(trainer.loader.accum_steps)])
    assert not result.skipped and torch.isfinite(torch.tensor(result.loss))
    assert any(not torch.equal(p.detach(), params[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_0(tmp_path, demo_dir):
    config = write_config(tmp_path, demo_dir, "term", train={"max_steps": 10_000})
    metrics_path = folder(tmp_path, "term") / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "open_vlm.train", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in err
    last_step = metrics(tmp_path, "term")[-1]["step"]
    saved = Checkpointer(str(folder(tmp_path, "term") / "checkpoints")).list_complete()
    assert [step for step, _ in saved] == [last_step]
    assert 3 <= last_step < 10_000


def test_evaluation_runs_in_the_training_precision(tmp_path, demo_dir):
    """bf16 under single/DDP evaluates under autocast, as FSDP's mixed precision does, not in fp32."""
    from open_vlm.trainer.loop import Trainer

    config = write_config(
        tmp_path,
        demo_dir,
        "evalbf16",
        train={"precision": "bf16", "max_steps": 1},
        eval={"every_steps": 1, "max_batches": 1},
    )
    trainer = Trainer(load_run_config(["--config", str(config)]), folder(tmp_path, "evalbf16"))
    trainer.step = 1
    got = trainer._maybe_evaluate()["eval_loss"]
    device = trainer.info.device
    fp32 = trainer.evaluator.evaluate(trainer.model, device)["eval_loss"]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = trainer.evaluator.evaluate(trainer.model, device)["eval_loss"]
    assert got == bf16 and bf16 != fp32


@pytest.mark.parametrize(
    ("task", "shards", "modality"),
    [("chat_lm", "demo-{000000..000001}.tar", "image_text"), ("causal_lm", "text/text-{000000..000001}.tar", "text")],
)
def test_paligemma_trained_on_tasks_without_token_types_is_causal(tmp_path, mixture_dir, task, shards, modality):
    """Issue 20 follow-up, through the trainer: `data.task chat_lm | causal_lm` on `model.kind paligemma` gives batches
    without token types; the model the trainer built must still not look ahead (SDPA, transformers' default)."""
    from open_vlm.data.build import batch_to_device
    from open_vlm.trainer.loop import Trainer

    source = {"name": "s", "urls": [str(mixture_dir / shards)], "weight": 1.0, "modality": modality}
    config = write_config(
        tmp_path,
        mixture_dir,
        task,
        data={"sources": [source], "task": task, "max_text_len": 40, "batch_size": 2, "num_streams": 8},
        train={"max_steps": 1},
    )
    trainer = Trainer(load_run_config(["--config", str(config)]), folder(tmp_path, task))
    batch = batch_to_device(next(iter(trainer.loader)), trainer.info.device)
    assert "token_type_ids" not in batch
    last = int(batch["attention_mask"][0].sum()) - 1  # row 0's last real token
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, last] = (int(batch["input_ids"][0, last]) + 1) % 60 + 5
    trainer.model.eval()  # no dropout: both calls must meet the same function
    with torch.no_grad(), trainer.strategy.autocast():
        before = trainer.bundle.forward(trainer.model, batch)["logits"][0, :last]
        after = trainer.bundle.forward(trainer.model, changed)["logits"][0, :last]
    assert float((before - after).abs().max()) == 0.0


def test_lxmert_loss_is_normalised_over_the_whole_step(tmp_path, demo_dir):
    """LXMERT's terms are means over what they supervise; under gradient accumulation the denominators are those of
    the whole step: a micro-batch of invalid rows (the loader's stand-ins) changes neither the loss nor the gradient.
    (A per-micro-batch mean divided by the accumulation steps halved both.)"""
    from open_vlm.trainer.loop import Trainer

    config = write_lxmert_config(tmp_path, demo_dir, "lxaccum")
    trainer = Trainer(load_run_config(["--config", str(config)]), folder(tmp_path, "lxaccum"))
    trainer.model.eval()  # no dropout: both steps must meet the same function
    good = next(iter(trainer.loader))
    invalid = {**good, "valid": torch.zeros_like(good["valid"])}
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    alone = trainer.train_step([good])
    trainer.model.load_state_dict(start)
    with_invalid = trainer.train_step([good, invalid])
    assert with_invalid.loss == pytest.approx(alone.loss, rel=1e-6)
    assert float(with_invalid.grad_norm) == pytest.approx(float(alone.grad_norm), rel=1e-5)


def test_sigterm_to_every_process_of_the_job_with_loader_workers(tmp_path, demo_dir):
    """Slurm (job end / preemption), systemd and `kill` of every pid signal each process, workers included: they
    ignore a stop signal unless the trainer sent it, so the rank checkpoints and exits 0 (it used to exit 1)."""
    config = write_config(tmp_path, demo_dir, "allterm", train={"max_steps": 1000}, data={"num_workers": 2})
    proc = start(config)
    try:
        wait_for_steps(proc, folder(tmp_path, "allterm") / "metrics.jsonl", 3)
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        status, err = finish(proc, timeout=120)
    finally:
        kill_tree(proc.pid)
    assert status == 0, err[-2000:]
    assert Checkpointer(str(folder(tmp_path, "allterm") / "checkpoints")).list_complete()
