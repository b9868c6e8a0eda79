"""Bottom-up-attention weights in detectron2's layout → the `resnet101_c4` detector's (torchvision) state dict.

Input: a detectron2 state dict of the Visual Genome R101-C4 model (py-bottom-up-attention's
`faster_rcnn_from_caffe.pkl` / `faster_rcnn_from_caffe_attr.pkl`, or `torch.save(model.state_dict())` of the model
detectron2 built from it): `backbone.stem.conv1.*`, `backbone.res{2,3,4}.<i>.{conv1,conv2,conv3,shortcut}[.norm].*`,
`proposal_generator.rpn_head.{conv,objectness_logits,anchor_deltas}.*`, `roi_heads.res5.<i>.*`,
`roi_heads.box_predictor.{cls_score,bbox_pred}.*` (attribute-head keys are dropped). Numpy arrays or tensors, in a
`.pkl` (read with an unpickler that only builds numpy arrays), a `.pth`/`.pt` (weights_only) or `.safetensors`.

What changes besides the names: the stem conv takes RGB instead of BGR (input channels flipped); detectron2 puts
the background class last, torchvision first (score rows moved, zero box deltas added for it); detectron2 orders a
location's anchors size-major, torchvision ratio-major (RPN output channels permuted).
"""

from __future__ import annotations

import io
import logging
import pickle
import re

import numpy as np
import torch

from open_vlm.extract.c4 import ANCHOR_SIZES, ASPECT_RATIOS

log = logging.getLogger(__name__)

# Only what numpy arrays in a pickle need (numpy 1 and 2 module names).
PICKLE_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}
NORM_LEAVES = ("weight", "bias", "running_mean", "running_var")  # frozen batch norm, same names on both sides
DROPPED = ("roi_heads.box_predictor.cls_embedding", "roi_heads.box_predictor.fc_attr", "roi_heads.box_predictor.attr")


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are read from a .pkl")
        return super().find_class(module, name)


def read_weights_file(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A state dict from a .pkl (numpy only), .safetensors or torch (weights_only) file's bytes; unwraps `model`."""
    if name.endswith(".pkl"):
        try:
            state = NumpyUnpickler(io.BytesIO(data), encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{name}: {err}") from None
    elif name.endswith(".safetensors"):
        from safetensors.torch import load

        state = load(data)
    else:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in state.items()}


def is_detectron2_c4(state: dict) -> bool:
    return "backbone.stem.conv1.weight" in state and any(k.startswith("roi_heads.res5.") for k in state)


def _block_name(rest: str) -> str:
    """`conv2.norm.weight` → `bn2.weight`; `shortcut.weight` → `downsample.0.weight`; `conv1.weight` as is."""
    match = re.fullmatch(r"(conv\d|shortcut)(\.norm)?\.(\w+)", rest)
    if match is None:
        raise KeyError(rest)
    part, norm, leaf = match.groups()
    if norm and leaf not in NORM_LEAVES:
        raise KeyError(rest)
    if part == "shortcut":
        return f"downsample.{1 if norm else 0}.{leaf}"
    return f"bn{part[-1]}.{leaf}" if norm else f"{part}.{leaf}"


def anchor_order() -> list[int]:
    """For each torchvision anchor (ratio-major), the index of the same anchor in detectron2's (size-major) order."""
    return [s * len(ASPECT_RATIOS) + r for r in range(len(ASPECT_RATIOS)) for s in range(len(ANCHOR_SIZES))]


def rename(key: str) -> str | None:
    """The torchvision name of a detectron2 key (None: dropped)."""
    if key.startswith(DROPPED) or key in ("pixel_mean", "pixel_std"):
        return None
    match = re.fullmatch(r"backbone\.stem\.conv1\.(norm\.)?(\w+)", key)
    if match:
        norm, leaf = match.groups()
        if norm and leaf not in NORM_LEAVES:
            raise KeyError(key)
        return f"backbone.body.bn1.{leaf}" if norm else f"backbone.body.conv1.{leaf}"
    match = re.fullmatch(r"backbone\.res(\d)\.(\d+)\.(.+)", key)
    if match:
        stage, block, rest = match.groups()
        return f"backbone.body.layer{int(stage) - 1}.{block}.{_block_name(rest)}"
    match = re.fullmatch(r"roi_heads\.res5\.(\d+)\.(.+)", key)
    if match:
        return f"roi_heads.box_head.res5.{match.group(1)}.{_block_name(match.group(2))}"
    heads = {
        "proposal_generator.rpn_head.conv.": "rpn.head.conv.",
        "proposal_generator.rpn_head.objectness_logits.": "rpn.head.cls_logits.",
        "proposal_generator.rpn_head.anchor_deltas.": "rpn.head.bbox_pred.",
        "roi_heads.box_predictor.cls_score.": "roi_heads.box_predictor.cls_score.",
        "roi_heads.box_predictor.bbox_pred.": "roi_heads.box_predictor.bbox_pred.",
    }
    for prefix, target in heads.items():
        if key.startswith(prefix):
            return target + key.removeprefix(prefix)
    raise KeyError(key)


def convert_detectron2_c4(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `resnet101_c4` state dict of a detectron2 bottom-up-attention state dict (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    unknown, dropped = [], []
    for key, value in state.items():
        try:
            name = rename(key)
        except KeyError:
            unknown.append(key)
            continue
        if name is None:
            dropped.append(key)
        else:
            out[name] = value.float() if value.is_floating_point() else value
    if unknown:
        raise ValueError(f"not a detectron2 R-C4 bottom-up-attention state dict: unknown keys {unknown[:5]}")
    stem = "backbone.body.conv1.weight"
    out[stem] = out[stem].flip(1)  # BGR → RGB input channels
    order = torch.tensor(anchor_order())
    for leaf in ("weight", "bias"):
        out[f"rpn.head.cls_logits.{leaf}"] = out[f"rpn.head.cls_logits.{leaf}"][order]
        deltas = out[f"rpn.head.bbox_pred.{leaf}"]
        out[f"rpn.head.bbox_pred.{leaf}"] = deltas.view(len(order), 4, *deltas.shape[1:])[order].flatten(0, 1)
        scores = out[f"roi_heads.box_predictor.cls_score.{leaf}"]
        out[f"roi_heads.box_predictor.cls_score.{leaf}"] = torch.cat([scores[-1:], scores[:-1]])  # background first
        boxes = out[f"roi_heads.box_predictor.bbox_pred.{leaf}"]
        classes = len(scores)
        if len(boxes) == 4:  # class-agnostic regression: the same deltas for every class
            boxes = boxes.repeat(classes - 1, *([1] * (boxes.dim() - 1)))
        out[f"roi_heads.box_predictor.bbox_pred.{leaf}"] = torch.cat([torch.zeros_like(boxes[:4]), boxes])
    if dropped:
        log.info("bottom-up-attention weights: not used: %s", ", ".join(sorted({k.rsplit(".", 1)[0] for k in dropped})))
    return out
