"""MFU arithmetic: device peaks by name, model FLOPs per batch (torchtitan's 6N + attention per tower)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from open_vlm.trainer.metrics import ThroughputWindow
from open_vlm.trainer.mfu import FlopCounter, peak_tflops
from tests.models.conftest import tokenizer  # noqa: F401 (a fixture)
from tests.models.test_paligemma import tiny as tiny_paligemma
from tests.models.test_vlm import tiny, with_images


@pytest.mark.parametrize(
    "name, tflops",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA L40S", 362.0),
        ("Tesla V100-SXM2-16GB", 125.0),
        ("NVIDIA H800 PCIe", 756.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA GB200", 2500.0),
        ("NVIDIA A10", 125.0),
    ],
)
def test_device_peak_from_its_name(name, tflops):
    assert peak_tflops(name) == tflops


@pytest.mark.parametrize("name", ["Some Future Accelerator", "NVIDIA RTX A1000", "NVIDIA RTX A4000", "NVIDIA L400"])
def test_unknown_device_has_no_peak(name):
    """A name only matches whole words of a model: an RTX A1000 is not an A100 (a 30x larger MFU denominator)."""
    assert peak_tflops(name) is None


def test_llama_flops_are_6n_plus_attention_with_n_from_the_config():
    h, inter, layers, vocab, batch, seq = 48, 96, 3, 100, 2, 10
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    counter = FlopCounter(LlamaForCausalLM(cfg))
    # Per layer q, k, v, o (h x h each), gate/up/down (h x inter each), two RMSNorms; the final norm; the tied
    # embedding/head left out as torchtitan does.
    n = layers * (4 * h * h + 3 * h * inter + 2 * h) + h
    ids = torch.zeros(batch, seq, dtype=torch.long)
    assert counter.batch_flops({"input_ids": ids}) == batch * (6 * n * seq + 12 * layers * h * seq * seq)


def test_vlm_counts_the_vision_tower_per_image_and_the_projector_per_token():
    model = tiny().model
    counter = FlopCounter(model)
    assert [(t.name, t.patches) for t in counter.towers] == [("vision_tower", 16), ("language_model", None)]
    assert counter.rest == sum(p.numel() for p in model.projector.parameters())
    batch = with_images(n=2, text=6)
    batch_size, seq = batch["input_ids"].shape
    vision, text = counter.towers
    assert counter.batch_flops(batch) == (
        vision.flops(batch_size, 16) + text.flops(batch_size, seq) + 6 * counter.rest * batch_size * seq
    )
    text_only = {"input_ids": batch["input_ids"]}  # no images: no vision FLOPs
    assert counter.batch_flops(text_only) == text.flops(batch_size, seq) + 6 * counter.rest * batch_size * seq


def test_window_reports_tflops_per_device_and_mfu_only_with_a_peak(monkeypatch):
    window = ThroughputWindow()
    window.add_step(samples=8, tokens=800, flops=3e15)
    window.add_step(samples=8, tokens=800, flops=1e15)
    monkeypatch.setattr(window, "elapsed", lambda: 2.0)
    record = window.record(world=2, peak_flops=989e12)
    assert record["tflops_per_device"] == pytest.approx(4e15 / 2 / 2.0 / 1e12)  # 1000 TFLOP/s
    assert record["mfu"] == pytest.approx(1000 / 989)
    assert "mfu" not in window.record(world=2) and "tflops_per_device" not in window.record(world=2)


def test_paligemma_towers_are_siglip_per_image_and_gemma(tokenizer):  # noqa: F811
    model = tiny_paligemma(tokenizer).model
    counter = FlopCounter(model)
    vision = model.model.vision_tower.config
    assert [(t.name.rsplit(".", 1)[-1], t.patches) for t in counter.towers] == [
        ("vision_tower", (vision.image_size // vision.patch_size) ** 2),
        ("language_model", None),
    ]
    assert counter.rest == sum(p.numel() for p in model.model.multi_modal_projector.parameters())
