"""`model.attn_implementation`: passed to every transformers part of every kind, and really used."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from open_vlm.config.schema import ModelConfig
from open_vlm.models.registry import build_model
from tests.models.conftest import CONFIGS, images, token_ids

KINDS = {
    "paligemma": "paligemma_tiny.yaml",
    "vlm": "vlm_tiny.yaml",
    "siglip": "siglip_tiny.yaml",
    "clip": "clip_tiny.yaml",
}


def forward(bundle, tokenizer) -> torch.Tensor:
    """One forward of the bundle's model on a fixed batch (image tokens where the kind wants them)."""
    n_img = bundle.num_image_tokens
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.cat([torch.full((2, n_img), image_id), token_ids(2, 6, len(tokenizer))], dim=1)
    batch = {"input_ids": ids, "pixel_values": images(2), "attention_mask": torch.ones_like(ids)}
    if bundle.kind == "paligemma":
        batch["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        out = bundle.forward(bundle.model.eval(), batch)
    return out.get("logits", out.get("image_features"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_transformers_part_uses_the_chosen_attention(kind, tokenizer, monkeypatch):
    from transformers import PreTrainedModel

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    outputs = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        cfg = ModelConfig(kind=kind, config=str(CONFIGS / KINDS[kind]), attn_implementation=implementation)
        bundle = build_model(cfg, tokenizer)
        parts = [m for m in bundle.model.modules() if isinstance(m, PreTrainedModel)]
        assert parts and {m.config._attn_implementation for m in parts} == {implementation}
        calls.clear()
        outputs[implementation] = forward(bundle, tokenizer)
        assert bool(calls) == (implementation == "sdpa")  # eager attention never calls SDPA
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-4, atol=1e-4)


def test_an_implementation_a_model_lacks_is_a_clear_error(tokenizer):
    cfg = ModelConfig(kind="lxmert", config=str(CONFIGS / "lxmert_tiny.yaml"), attn_implementation="sdpa")
    with pytest.raises(ValueError, match="model.attn_implementation sdpa: LxmertForPreTraining has only eager"):
        build_model(cfg)
    cfg.attn_implementation = "eager"
    assert build_model(cfg).model.config._attn_implementation == "eager"


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_its_package_names_the_key(tokenizer):
    cfg = ModelConfig(kind="siglip", config=str(CONFIGS / "siglip_tiny.yaml"), attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match=r"model.attn_implementation flash_attention_2: SiglipModel: .*eager, sdpa"):
        build_model(cfg, tokenizer)
