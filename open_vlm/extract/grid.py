"""`grid`: the patch features of a SigLIP or CLIP vision tower (the run's `model` section), one region per patch,
with the patch's cell of the image as its box (K = patches, row-major as the tower orders them)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from open_vlm.config.schema import RunConfig
from open_vlm.extract.registry import Regions, register_extractor

TOWER_KINDS = ("siglip", "clip")


def grid_boxes(side: int) -> np.ndarray:
    """(side * side, 4) boxes x1 y1 x2 y2 in [0, 1] of a side x side grid, row by row."""
    edges = np.arange(side + 1, dtype=np.float64) / side
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    r, c = rows.ravel(), cols.ravel()
    return np.stack([edges[c], edges[r], edges[c + 1], edges[r + 1]], axis=1).astype(np.float32)


def image_stats(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel pixel mean and std a tower was trained with."""
    if kind == "clip":
        from open_vlm.models.clip import IMAGE_MEAN, IMAGE_STD

        return torch.tensor(IMAGE_MEAN), torch.tensor(IMAGE_STD)
    return torch.full((3,), 0.5), torch.full((3,), 0.5)


def pixel_values(images: list[Image.Image], size: int, kind: str) -> torch.Tensor:
    """PIL images → normalised float (B, 3, size, size), resized (bicubic) as the training data path does."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC, reducing_gap=None)) for im in images]
    pixels = torch.from_numpy(np.stack(arrays)).float().div(255).permute(0, 3, 1, 2)
    mean, std = image_stats(kind)
    return (pixels - mean[:, None, None]) / std[:, None, None]


class GridExtractor:
    """Patch features (K = patches, D = tower width) of `model.vision_feature_layer`."""

    name = "grid"

    def __init__(self, cfg: RunConfig, device: torch.device):
        from open_vlm.models.registry import build_model

        if cfg.model.kind not in TOWER_KINDS:
            raise ValueError(f"extract.extractor grid needs model.kind in {TOWER_KINDS}, got {cfg.model.kind!r}")
        torch.manual_seed(cfg.extract.seed)
        bundle = build_model(cfg.model)
        self.kind, self.image_size, self.device = bundle.kind, bundle.image_size, device
        self.layer = cfg.model.vision_feature_layer
        self.tower = bundle.model.vision_model.eval().to(device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[Regions]:
        pixels = pixel_values(images, self.image_size, self.kind).to(self.device)
        out = self.tower(pixel_values=pixels, output_hidden_states=self.layer != -1)
        feats = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]
        if self.kind == "clip":
            feats = feats[:, 1:]  # the class token has no cell
        side = math.isqrt(feats.shape[1])
        if side * side != feats.shape[1]:
            raise ValueError(f"{feats.shape[1]} patches do not form a square grid")
        boxes = grid_boxes(side)
        info = {"grid": side, "feature_layer": self.layer}
        return [Regions(features=f.float().cpu().numpy(), boxes=boxes.copy(), info=dict(info)) for f in feats]


@register_extractor("grid")
def _grid(cfg: RunConfig, device: torch.device) -> GridExtractor:
    return GridExtractor(cfg, device)
