"""Extractors by name (`extract.extractor`): each maps a batch of images to K regions per image."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from open_vlm.config.schema import RunConfig
from open_vlm.names import lookup


@dataclass
class Regions:
    """One image's regions: features (K, D) float32, boxes (K, 4) x1 y1 x2 y2 in [0, 1] of the image's own
    width and height, and, for detectors, object classes (K,) int64 and scores (K,) float32."""

    features: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray | None = None
    scores: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # how they were chosen (stored in the sample json)


class Extractor(Protocol):
    name: str

    def __call__(self, images: list[Image.Image]) -> list[Regions]: ...


Factory = Callable[[RunConfig, torch.device], Extractor]
_EXTRACTORS: dict[str, Factory] = {}


def register_extractor(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register `factory(cfg, device) -> Extractor` under `name`."""

    def add(factory: Factory) -> Factory:
        _EXTRACTORS[name] = factory
        return factory

    return add


def build_extractor(cfg: RunConfig, device: torch.device) -> Extractor:
    """The extractor `cfg.extract.extractor`, in eval mode on `device`."""
    from open_vlm.extract import grid, region  # noqa: F401  (each registers itself)

    name = cfg.extract.extractor
    return lookup(_EXTRACTORS, name, "extract.extractor")(cfg, device)
