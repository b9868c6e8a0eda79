"""Vision → language projectors (`linear`, `mlp`) with optional pixel-shuffle token reduction."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn


def pixel_shuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, H*W, C) patch features → (B, H*W/f², C*f²): each output token is one f×f block of patches."""
    if factor == 1:
        return x
    b, n, c = x.shape
    side = math.isqrt(n)
    if side * side != n or side % factor:
        raise ValueError(f"pixel shuffle needs a square grid divisible by {factor}, got {n} tokens")
    g = side // factor
    x = x.view(b, g, factor, g, factor, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * g, factor * factor * c)


def linear_projector(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def mlp_projector(in_dim: int, out_dim: int) -> nn.Module:
    """LLaVA-1.5's two-layer GELU MLP."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {"linear": linear_projector, "mlp": mlp_projector}


class Projector(nn.Module):
    """Pixel shuffle by `factor`, then a `kind` projection from vision width to language width."""

    def __init__(self, kind: str, vision_dim: int, text_dim: int, factor: int = 1):
        super().__init__()
        if kind not in PROJECTORS:
            raise ValueError(f"unknown projector '{kind}' (known: {sorted(PROJECTORS)})")
        self.factor = factor
        self.proj = PROJECTORS[kind](vision_dim * factor * factor, text_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_shuffle(features, self.factor))
