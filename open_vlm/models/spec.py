"""Reading model config files and the small helpers every builder shares."""

from __future__ import annotations

import json

import fsspec
import torch.nn as nn
import yaml


def read_model_config(path: str) -> dict:
    """A model config file (YAML or JSON), local or remote."""
    with fsspec.open(path, "r") as f:
        text = f.read()
    return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)


def module_name(root: nn.Module, target: nn.Module) -> str:
    """The dotted name of `target` inside `root` (raises when it is not a submodule)."""
    for name, module in root.named_modules():
        if module is target:
            return name
    raise ValueError(f"{type(target).__name__} is not a submodule of {type(root).__name__}")


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model: the ModuleList sized `config.num_hidden_layers`."""
    want = lm.config.num_hidden_layers
    for module in lm.modules():
        if isinstance(module, nn.ModuleList) and len(module) == want:
            return list(module)
    raise ValueError(f"no ModuleList of {want} layers in {type(lm).__name__}")
