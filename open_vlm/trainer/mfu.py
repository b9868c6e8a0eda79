"""Model FLOPs utilisation: a model's training FLOPs per batch (towers counted torchtitan-style) and device peaks.

Per tower and sample: 6 N S + 12 L d S^2, with N the tower's parameters less its embedding tables, S its
sequence (text: the batch's padded length; vision: patches per image), L its layers and d its width (the
attention's QK^T and AV matmuls, forward and backward, as torchtitan counts them: full, not causal). Parameters
in no tower (a projector, a head) count once per text token. A tower is the outermost module whose transformers
config has `num_hidden_layers` and `hidden_size` and no sub-configs (so PaliGemma's Gemma and SigLIP, a composed
VLM's LM and vision tower, SigLIP/CLIP's text and vision models).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets. A key matches whole words of
# the device name (an "RTX A1000" is no "A100"); the first that matches wins, so more specific names come first.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM
    ("H800 PCIe", 756.0),
    ("H800", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("V100", 125.0),  # fp16: V100 has no bf16
)


def peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a device named like `torch.cuda.get_device_name()`, or None when unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])", device_name.lower()):
            return tflops
    return None


def device_peak_flops(device: torch.device) -> float | None:
    """FLOP/s peak of a CUDA device (None on CPU or for a device not in the table)."""
    if device.type != "cuda":
        return None
    tflops = peak_tflops(torch.cuda.get_device_name(device))
    return None if tflops is None else tflops * 1e12


@dataclass(frozen=True)
class Tower:
    name: str
    params: int  # without embedding tables
    layers: int
    width: int
    patches: int | None  # vision: sequence per image; None: a text tower (the batch's sequence)

    def flops(self, samples: int, seq: int) -> float:
        """Training FLOPs (forward + backward) of `samples` sequences of `seq` positions."""
        return samples * (6.0 * self.params * seq + 12.0 * self.layers * self.width * seq * seq)


def _embedding_params(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}


def _is_tower_config(config) -> bool:
    if any(hasattr(config, sub) for sub in ("vision_config", "text_config")):
        return False
    return isinstance(getattr(config, "num_hidden_layers", None), int) and isinstance(
        getattr(config, "hidden_size", None), int
    )


def _patches(config) -> int | None:
    image, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if not isinstance(image, int) or not isinstance(patch, int):
        return None
    return (image // patch) ** 2


class FlopCounter:
    """Training FLOPs of a batch for `model` (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.towers: list[Tower] = []
        counted: set[int] = set()
        embeddings = _embedding_params(model)
        for name, module in model.named_modules():
            config = getattr(module, "config", None)
            if config is None or not _is_tower_config(config) or id(module) in counted:
                continue
            params = {id(p): p.numel() for p in module.parameters()}
            if any(pid in counted for pid in params):  # inside a tower already taken (an outer one wins)
                continue
            counted.update(params)
            counted.update(id(m) for m in module.modules())
            dense = sum(n for pid, n in params.items() if pid not in embeddings)
            self.towers.append(Tower(name, dense, config.num_hidden_layers, config.hidden_size, _patches(config)))
        self.rest = sum(p.numel() for p in model.parameters() if id(p) not in counted and id(p) not in embeddings)

    def batch_flops(self, batch: dict) -> float:
        """Training FLOPs of one (micro-)batch: its text towers over `input_ids`, vision towers over its images."""
        ids = batch.get("input_ids")
        samples, seq = (ids.shape[0], ids.shape[-1]) if isinstance(ids, torch.Tensor) else (0, 0)
        pixels = batch.get("pixel_values")
        images = pixels.shape[0] if isinstance(pixels, torch.Tensor) else 0
        total = 6.0 * self.rest * samples * seq
        for tower in self.towers:
            total += tower.flops(images, tower.patches) if tower.patches else tower.flops(samples, seq)
        return total
