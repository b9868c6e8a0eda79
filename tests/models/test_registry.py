"""The model registry: every kind registered, unknown kinds named, bundles' groups cover their models."""

import pytest
import torch

from open_vlm.config.schema import ModelConfig
from open_vlm.models.freeze import owner_group
from open_vlm.models.registry import build_model, model_kinds
from tests.models.conftest import CONFIGS

TINY = {
    "siglip": "siglip_tiny.yaml",
    "lxmert": "lxmert_tiny.yaml",
    "vlm": "vlm_tiny.yaml",
    "paligemma": "paligemma_tiny.yaml",
}
TASKS = {"siglip": "contrastive", "lxmert": "lxmert", "vlm": "chat_lm", "paligemma": "prefix_lm"}


def test_kinds_registered():
    assert set(TINY) <= set(model_kinds())


def test_unknown_kind_names_the_nearest():
    with pytest.raises(ValueError, match="did you mean 'siglip'"):
        build_model(ModelConfig(kind="sigclip", config="x.yaml"))


def test_missing_source_is_an_error():
    with pytest.raises(ValueError, match="needs model.pretrained"):
        build_model(ModelConfig(kind="lxmert"))


@pytest.mark.parametrize("kind", sorted(TINY))
def test_bundle_contract(kind, tokenizer):
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind=kind, config=str(CONFIGS / TINY[kind])), tokenizer)
    assert bundle.kind == kind and bundle.task == TASKS[kind]
    modules = set(map(id, bundle.model.modules()))
    assert bundle.shard_units and all(id(unit) in modules for unit in bundle.shard_units)
    unit_params = [id(p) for unit in bundle.shard_units for p in unit.parameters()]
    assert len(unit_params) == len(set(unit_params))  # units do not nest
    names = [n for n, _ in bundle.model.named_parameters()]
    assert all(owner_group(n, bundle.groups) != "other" for n in names), "a parameter outside every group"
    for group, prefixes in bundle.groups.items():
        assert prefixes, group
