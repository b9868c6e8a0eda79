"""`region`: a torchvision Faster R-CNN; exactly K RoI-pooled regions per image, chosen as bottom-up-attention
(Anderson et al.) does: per-class NMS over the RPN proposals, a region survives when it is kept for some class with
score >= `score_thresh`, survivors ranked by that score. The output boxes are the proposals themselves, so each
feature is pooled from exactly its box.

When fewer than K survive, the NMS IoU threshold is raised step by step from `nms_iou` toward 1.0; if still fewer,
the rest is filled deterministically: first the best remaining proposals below the score threshold, then the
whole-image box (repeated). The sample json says how (`nms_iou`, `num_detected`, `padding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from open_vlm.config.schema import RegionExtractorConfig, RunConfig
from open_vlm.extract.registry import Regions, register_extractor

log = logging.getLogger(__name__)


def _resnet_fpn(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, representation_size: int, **kwargs) -> nn.Module:
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        # Frozen batch norm, as torchvision's trained detectors: their state dicts load as they are.
        backbone = resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=0)
        head = TwoMLPHead(backbone.out_channels * 7**2, representation_size)  # 7 x 7 RoIAlign, torchvision's
        predictor = FastRCNNPredictor(representation_size, num_classes)
        return FasterRCNN(backbone, box_head=head, box_predictor=predictor, **kwargs)

    return build


def _mobilenet_v3_large_fpn(num_classes: int, representation_size: int, **kwargs) -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    model = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    heads = model.roi_heads
    if heads.box_head.fc7.out_features != representation_size:
        resolution = heads.box_roi_pool.output_size[0]
        heads.box_head = TwoMLPHead(model.backbone.out_channels * resolution**2, representation_size)
        heads.box_predictor = FastRCNNPredictor(representation_size, num_classes)
    return model


def _resnet_c4(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, representation_size: int, **kwargs) -> nn.Module:
        from open_vlm.extract.c4 import build_c4_detector

        return build_c4_detector(name, num_classes, **kwargs)  # the box feature is res5's width: 2048

    return build


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet50_fpn": _resnet_fpn("resnet50"),
    "resnet18_fpn": _resnet_fpn("resnet18"),
    "mobilenet_v3_large_fpn": _mobilenet_v3_large_fpn,
    "resnet101_c4": _resnet_c4("resnet101"),  # bottom-up attention's layout (extract/c4.py)
    "resnet50_c4": _resnet_c4("resnet50"),
}


def load_state_dict(url: str) -> dict[str, torch.Tensor]:
    """A state dict from a `.pt`/`.pth` (weights_only), `.safetensors` or `.pkl` (numpy arrays only) file, local or
    any fsspec URL; detectron2 bottom-up-attention weights are converted to the `resnet101_c4` layout."""
    from open_vlm.checkpoint.dcp_safe import refusing_pickles
    from open_vlm.extract.bottom_up_weights import convert_detectron2_c4, is_detectron2_c4, read_weights_file

    with fsspec.open(url, "rb") as f, refusing_pickles(url):
        state = read_weights_file(f.read(), url)
    if is_detectron2_c4(state):
        log.info("%s: detectron2 bottom-up-attention weights, converted to the resnet101_c4 layout", url)
        return convert_detectron2_c4(state)
    return state


def build_detector(cfg: RegionExtractorConfig) -> nn.Module:
    """The Faster R-CNN of `cfg` in eval mode: weights from `cfg.weights`, else the current RNG's random init."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"unknown extract.region.backbone {cfg.backbone!r} (known: {sorted(BACKBONES)})")
    model = BACKBONES[cfg.backbone](
        cfg.num_classes,
        cfg.representation_size,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
    )
    if cfg.weights:
        model.load_state_dict(load_state_dict(cfg.weights), strict=True)
    else:
        log.warning("extract.region.weights is not set: the detector is randomly initialised (tests only)")
    return model.eval()


@dataclass
class Selection:
    """Which rows of the candidate boxes become the K regions (index == number of proposals: whole image)."""

    index: torch.Tensor
    nms_iou: float
    num_detected: int
    below_threshold: int
    whole_image: int

    def info(self) -> dict:
        padded = {"below_threshold": self.below_threshold, "whole_image": self.whole_image}
        return {"nms_iou": self.nms_iou, "num_detected": self.num_detected, "padding": padded}


def iou_schedule(start: float, step: float) -> list[float]:
    """`start`, `start + step`, ... up to and including 1.0 (only `start` when step <= 0)."""
    values = [round(start, 6)]
    while step > 0 and values[-1] < 1.0:
        values.append(round(min(1.0, start + len(values) * step), 6))
    return values


def survivors(rois: torch.Tensor, fg_scores: torch.Tensor, iou: float, score_thresh: float) -> torch.Tensor:
    """Per-region max score over the classes it is kept for by per-class NMS at `iou` (-1: not kept)."""
    from torchvision.ops import batched_nms

    best = torch.full((len(rois),), -1.0, dtype=fg_scores.dtype, device=fg_scores.device)
    # A pair below the threshold can only suppress lower-scoring pairs, so dropping them first changes nothing.
    pairs = (fg_scores >= score_thresh).nonzero()
    if len(pairs) == 0:
        return best
    scores = fg_scores[pairs[:, 0], pairs[:, 1]]
    keep = batched_nms(rois[pairs[:, 0]].float(), scores.float(), pairs[:, 1], iou)
    return best.scatter_reduce(0, pairs[keep, 0], scores[keep], reduce="amax")


def select_regions(
    rois: torch.Tensor, fg_scores: torch.Tensor, k: int, score_thresh: float, nms_iou: float, nms_iou_step: float
) -> Selection:
    """Exactly `k` region indices into `rois` (N, 4) scored by `fg_scores` (N, C foreground classes)."""
    for iou in iou_schedule(nms_iou, nms_iou_step):
        best = survivors(rois, fg_scores, iou, score_thresh)
        kept = best >= 0
        if int(kept.sum()) >= k:
            break
    order = torch.sort(best, descending=True, stable=True).indices
    chosen = order[kept[order]][:k]
    num_detected = len(chosen)
    if len(chosen) < k:  # the best proposals below the threshold, then the whole-image box
        raw = fg_scores.max(dim=1).values if fg_scores.shape[1] else torch.zeros(len(rois))
        rest = torch.sort(raw, descending=True, stable=True).indices
        rest = rest[~kept[rest]][: k - len(chosen)]
        chosen = torch.cat([chosen, rest])
    below = len(chosen) - num_detected
    whole = k - len(chosen)
    chosen = torch.cat([chosen, torch.full((whole,), len(rois), dtype=torch.long, device=chosen.device)])
    return Selection(chosen, iou, num_detected, below, whole)


class RegionExtractor:
    """Faster R-CNN → K regions per image: box-head (or RoIAlign) features, normalised boxes, classes, scores."""

    name = "region"

    def __init__(self, cfg: RegionExtractorConfig, num_regions: int, device: torch.device):
        self.cfg, self.k, self.device = cfg, num_regions, device
        self.model = build_detector(cfg).to(device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image]) -> list[Regions]:
        model = self.model
        tensors = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).float().div(255) for im in images]
        image_list, _ = model.transform([t.to(self.device) for t in tensors])
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features)
        rois = []
        for props, (h, w) in zip(proposals, image_list.image_sizes):
            whole = torch.tensor([[0.0, 0.0, w, h]], dtype=props.dtype, device=props.device)
            rois.append(torch.cat([props, whole]))  # the whole-image box rides along for padding
        pooled = model.roi_heads.box_roi_pool(features, rois, image_list.image_sizes)
        head = model.roi_heads.box_head(pooled)
        logits, _ = model.roi_heads.box_predictor(head)
        probs = F.softmax(logits.float(), dim=-1)
        feats = head if self.cfg.feature == "box_head" else pooled.mean(dim=(2, 3))
        out = []
        start = 0
        for boxes, (h, w) in zip(rois, image_list.image_sizes):
            rows = slice(start, start + len(boxes))
            start += len(boxes)
            p, f = probs[rows], feats[rows]
            sel = select_regions(
                boxes[:-1], p[:-1, 1:], self.k, self.cfg.score_thresh, self.cfg.nms_iou, self.cfg.nms_iou_step
            )
            idx = sel.index
            # Proposals are clipped to the resized image (h, w): dividing by it normalises by the image's own
            # width and height (the resize keeps the aspect ratio), with no clamping needed.
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            fg = p[idx, 1:]
            out.append(
                Regions(
                    features=f[idx].float().cpu().numpy(),
                    boxes=(boxes[idx] / scale).float().cpu().numpy(),
                    classes=(fg.argmax(dim=1) + 1).cpu().numpy().astype(np.int64),
                    scores=fg.max(dim=1).values.float().cpu().numpy(),
                    info=sel.info(),
                )
            )
        return out


@register_extractor("region")
def _region(cfg: RunConfig, device: torch.device) -> RegionExtractor:
    torch.manual_seed(cfg.extract.seed)  # random init (no weights) is then the same in every process
    return RegionExtractor(cfg.extract.region, cfg.extract.num_regions, device)
