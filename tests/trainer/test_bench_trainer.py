"""`bench/trainer.py --gpu`: its arithmetic and model shape on CPU, and the whole path as a CPU smoke run."""

import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO


def bench_module():
    sys.path.insert(0, str(REPO / "bench"))  # the benches import their `common` module
    spec = importlib.util.spec_from_file_location("bench_trainer", REPO / "bench" / "trainer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paligemma_3b_shape_has_its_published_parameter_count():
    from transformers import PaliGemmaForConditionalGeneration

    from open_vlm.models.paligemma import paligemma_config

    shape = bench_module().PALIGEMMA_3B
    spec = {"vision": shape["vision"], "text": {**shape["text"], "vocab_size": 257216}, "image_token_index": 257152}
    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(paligemma_config(spec, None))
    params = sum(p.numel() for p in model.parameters())
    assert 2.90e9 < params < 2.95e9  # google/paligemma-3b: 2.92B


def test_rates_are_tokens_and_flops_over_time_and_mfu_over_the_peak():
    r = bench_module().rates(steps=10, seconds=4.0, positions=40_000, flops=2e15, peak=1e15)
    assert r["steps_per_s"] == 2.5 and r["tokens_per_s"] == 10_000
    assert r["tflops"] == pytest.approx(500.0) and r["mfu"] == pytest.approx(0.5)
    assert bench_module().rates(1, 1.0, 1, 1.0, None)["mfu"] is None


@pytest.mark.slow
def test_gpu_bench_runs_trainer_and_bare_loop_on_cpu(tmp_path):
    """The `--gpu` code path (FSDP2 on a world of one, bf16, the real loader) with a tiny model on CPU."""
    args = ["--gpu", "--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--gpu-batch", "4"]
    args += ["--workers", "1", "--shards", "2", "--per-shard", "16", "--data", str(tmp_path / "shards")]
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trainer.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ours = re.search(r"trainer \(FSDP2, bf16\)\s+([\d,]+) tokens/s", out.stdout)
    bare = re.search(r"bare loop \(autocast\)\s+([\d,]+) tokens/s", out.stdout)
    ratio = re.search(r"ratio trainer / bare ([\d.]+)", out.stdout)
    assert ours and bare and ratio, out.stdout
    assert float(ours[1].replace(",", "")) > 0 and float(bare[1].replace(",", "")) > 0
    assert "MFU n/a" in out.stdout  # no peak for a CPU


def test_cpu_bench_runs_with_fewer_steps_than_its_loss_check(tmp_path):
    """`--steps 1`: the first-losses check compares what there is (it used to index three steps)."""
    args = ["--steps", "1", "--repeats", "1", "--batch", "2", "--accum", "1"]
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trainer.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"first losses: trainer \[[\d.]+\]  bare \[[\d.]+\]", out.stdout), out.stdout
    assert "ratio (median of repeats)" in out.stdout


def test_bench_refuses_zero_steps_in_one_line():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trainer.py"), "--steps", "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--steps: must be at least 1, not 0" in out.stderr, out.stderr
