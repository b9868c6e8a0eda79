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


def pretrained_or_config(model_cls, cfg, tokenizer, make_config) -> nn.Module:
    """`model_cls` from `cfg.pretrained` (a save_pretrained dir, local or URL) or, for random init, from
    `make_config(<cfg.config file contents>, tokenizer)`."""
    from open_vlm.storage import local_dir

    if cfg.pretrained:
        return model_cls.from_pretrained(str(local_dir(cfg.pretrained)), local_files_only=True)
    if cfg.config:
        return model_cls(make_config(read_model_config(cfg.config), tokenizer))
    raise ValueError(f"model.kind {cfg.kind} needs model.pretrained or model.config")


def set_attention(model: nn.Module, implementation: str, key: str = "model.attn_implementation") -> None:
    """Switch every transformers model inside `model` to attention `implementation` (eager, sdpa,
    flash_attention_2); a ValueError naming `key` when one of them cannot use it."""
    from transformers import PreTrainedModel

    outer: list[str] = []  # the outermost transformers models (they pass the choice on to their parts)
    for name, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(name.startswith(f"{o}.") or o == "" for o in outer):
            outer.append(name)
            try:
                module.set_attn_implementation(implementation)
            except (ValueError, ImportError) as err:
                reason = str(err).split(". ")[0].rstrip(".")
                raise ValueError(
                    f"{key} {implementation}: {type(module).__name__}: {reason}; choose another (eager, sdpa)"
                ) from None
            if module.config._attn_implementation != implementation:
                raise ValueError(
                    f"{key} {implementation}: {type(module).__name__} has only "
                    f"{module.config._attn_implementation} attention; use that or leave the key unset"
                )
