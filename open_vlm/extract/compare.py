"""`open-vlm extract --compare REF`: our regions against another extractor's, image by image.

Per image (matched by id) the two box sets are paired one to one by the assignment that maximises the total IoU
(Hungarian); reported: the mean IoU of the pairs, the share of our boxes paired at IoU >= 0.5, and the cosine
similarity of the paired features (all pairs, and pairs at IoU >= 0.5) when both have the same width.

Reference formats (`read_reference`, by the file name):
- our `region_features` shards: a `.tar` (brace patterns allowed) or a folder of them;
- a `.tsv` of the bottom-up-attention tools, no header, base64 float32 `boxes` / `features`: LXMERT's 10 columns
  (`img_id img_h img_w objects_id objects_conf attrs_id attrs_conf num_boxes boxes features`) or
  `generate_tsv.py`'s 6 (`image_id image_w image_h num_boxes boxes features`);
- `.npz` files, one per image named `<image id>.npz` (a folder of them, or one file), as bottom-up-attention.pytorch
  writes them: `x` (K, D) features, `bbox` (K, 4) pixel boxes, `image_w`, `image_h` (also `features` / `boxes`).
Boxes in pixels are normalised by the image's width and height. Image ids match when equal or, failing that, when
their trailing numbers are (`COCO_val2014_000000397133`, `000000397133` and `397133` are one image).
"""

from __future__ import annotations

import base64
import csv
import io
import posixpath
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import fsspec
import numpy as np

from open_vlm.data.shards import expand_urls, iter_tar_samples, open_url

IOU_MATCH = 0.5


@dataclass
class ImageRegions:
    """One image's boxes (K, 4) x1 y1 x2 y2 in [0, 1] and features (K, D)."""

    boxes: np.ndarray
    features: np.ndarray


# --- readers -------------------------------------------------------------------------------------------------
def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_shards(ref: str) -> dict[str, ImageRegions]:
    """`region_features` shards (a `.tar`, a brace pattern, or a folder of `.tar` files) by json `image_id`."""
    import json

    fs, root = fsspec.core.url_to_fs(ref)
    if not ref.endswith(".tar") and "{" not in ref and fs.isdir(root):
        protocol = "" if "://" not in ref else ref.split("://", 1)[0] + "://"
        urls = [protocol + p for p in sorted(fs.glob(posixpath.join(root, "*.tar")))]
    else:
        urls = expand_urls(ref)
    out = {}
    for url in urls:
        with open_url(url) as stream:
            for sample in iter_tar_samples(stream, url):
                meta = json.loads(sample["json"]) if "json" in sample else {}
                key = str(meta.get("image_id", sample["__key__"].rsplit("/", 1)[-1]))
                out[key] = ImageRegions(_npy(sample["boxes.npy"]), _npy(sample["features.npy"]))
    return out


TSV_COLUMNS = {
    10: (
        *("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf"),
        *("num_boxes", "boxes", "features"),
    ),
    6: ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features"),
}


def _b64(text: str, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.float32).reshape(shape)


def read_tsv(ref: str) -> dict[str, ImageRegions]:
    """A bottom-up-attention `.tsv` (LXMERT's 10 columns or `generate_tsv.py`'s 6)."""
    csv.field_size_limit(sys.maxsize)
    out = {}
    with fsspec.open(ref, "r") as f:
        for line, row in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if len(row) not in TSV_COLUMNS:
                raise ValueError(f"{ref} line {line}: {len(row)} columns; expected {sorted(TSV_COLUMNS)}")
            item = dict(zip(TSV_COLUMNS[len(row)], row))
            image_id = item.get("img_id", item.get("image_id"))
            w, h = float(item.get("img_w", item.get("image_w"))), float(item.get("img_h", item.get("image_h")))
            k = int(item["num_boxes"])
            boxes = _b64(item["boxes"], (k, 4)) / np.array([w, h, w, h], dtype=np.float32)
            out[image_id] = ImageRegions(boxes, _b64(item["features"], (k, -1)))
    return out


def _npz_regions(data: bytes) -> ImageRegions:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # `info` (a pickled dict) is never read
        features = npz["x"] if "x" in npz else npz["features"]
        boxes = npz["bbox"] if "bbox" in npz else npz["boxes"]
        w, h = float(npz["image_w"]), float(npz["image_h"])
    return ImageRegions(boxes.astype(np.float32) / np.array([w, h, w, h], dtype=np.float32), features)


def _region_npz_files(fs, root: str) -> list[str]:
    """The per-image `.npz` files of a folder (not a shard folder's `manifest.index.npz`)."""
    return sorted(p for p in fs.glob(posixpath.join(root, "*.npz")) if not p.endswith(".index.npz"))


def read_npz(ref: str) -> dict[str, ImageRegions]:
    """One `.npz` per image (`<image id>.npz`): a folder of them or a single file."""
    fs, root = fsspec.core.url_to_fs(ref)
    paths = _region_npz_files(fs, root) if fs.isdir(root) else [root]
    return {posixpath.basename(p)[: -len(".npz")]: _npz_regions(fs.cat_file(p)) for p in paths}


READERS: dict[str, Callable[[str], dict[str, ImageRegions]]] = {"tsv": read_tsv, "npz": read_npz, "shards": read_shards}


def reference_format(ref: str) -> str:
    """`tsv`, `npz` or `shards`, from the name (a folder: whichever files it holds)."""
    fs, root = fsspec.core.url_to_fs(ref)
    if fs.isdir(root):
        if _region_npz_files(fs, root):
            return "npz"
        if fs.glob(posixpath.join(root, "*.tar")):
            return "shards"
    elif ref.endswith((".tsv", ".npz")):
        return ref.rsplit(".", 1)[1]
    elif ref.endswith(".tar") or "{" in ref:
        return "shards"
    raise ValueError(f"--compare {ref}: not a .tsv, .npz or .tar (or a folder of .npz / .tar files)")


def read_reference(ref: str) -> dict[str, ImageRegions]:
    """Regions by image id from a reference file or folder (see the module docstring for the formats)."""
    fs, root = fsspec.core.url_to_fs(ref)
    if "{" not in ref and not fs.exists(root):
        raise FileNotFoundError(f"--compare {ref}: no such file or folder")
    return READERS[reference_format(ref)](ref)


# --- matching ------------------------------------------------------------------------------------------------
def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(-1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1 y1 x2 y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.where(norms > 0, norms, 1)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def compare_image(ours: ImageRegions, ref: ImageRegions) -> dict:
    """IoU and feature agreement of one image's regions, boxes paired one to one by the best total IoU."""
    from scipy.optimize import linear_sum_assignment

    iou = box_iou(ours.boxes.astype(np.float64), ref.boxes.astype(np.float64))
    rows, cols = linear_sum_assignment(iou, maximize=True)
    paired = iou[rows, cols]
    good = paired >= IOU_MATCH
    out = {
        "num_ours": len(ours.boxes),
        "num_ref": len(ref.boxes),
        "mean_iou": _mean(paired),
        "matched_at_0.5": float(good.sum() / max(len(ours.boxes), 1)),
        "mean_cosine": None,
        "mean_cosine_at_0.5": None,
    }
    if ours.features.shape[1] == ref.features.shape[1]:
        sims = cosine(ours.features[rows], ref.features[cols])
        out["mean_cosine"], out["mean_cosine_at_0.5"] = _mean(sims), _mean(sims[good])
    return out


def _trailing_number(image_id: str) -> str | None:
    match = re.search(r"(\d+)$", image_id)
    return str(int(match.group(1))) if match else None


def pair_ids(ours: list[str], ref: list[str]) -> Iterator[tuple[str, str]]:
    """(our id, reference id) pairs: equal ids, then equal trailing numbers."""
    exact = set(ours) & set(ref)
    by_number = {}
    for r in ref:
        if r not in exact and _trailing_number(r) is not None:
            by_number.setdefault(_trailing_number(r), r)
    for o in ours:
        if o in exact:
            yield o, o
        elif _trailing_number(o) in by_number:
            yield o, by_number[_trailing_number(o)]


def compare(ours: dict[str, ImageRegions], ref: dict[str, ImageRegions]) -> dict:
    """Per-image comparisons and their averages; which images only one side has."""
    pairs = list(pair_ids(list(ours), list(ref)))
    images = {o: {"reference_id": r, **compare_image(ours[o], ref[r])} for o, r in pairs}
    summary = {"images": len(images)}
    for key in ("mean_iou", "matched_at_0.5", "mean_cosine", "mean_cosine_at_0.5"):
        values = [v[key] for v in images.values() if v[key] is not None]
        summary[key] = float(np.mean(values)) if values else None
    if ours and ref:
        dims = {next(iter(ours.values())).features.shape[1], next(iter(ref.values())).features.shape[1]}
        summary["feature_dims"] = sorted(dims)
    matched_ref = {r for _, r in pairs}
    summary["only_ours"] = sorted(set(ours) - set(images))
    summary["only_reference"] = sorted(set(ref) - matched_ref)
    return {"summary": summary, "images": images}


def render(result: dict) -> str:
    """A readable table: one line per image, then the averages."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'image':24s} {'ours':>5s} {'ref':>5s} {'mean IoU':>9s} {'IoU>=.5':>8s} {'cosine':>7s} {'cos@.5':>7s}"]
    for name, v in result["images"].items():
        lines.append(
            f"{name[:24]:24s} {v['num_ours']:5d} {v['num_ref']:5d} {fmt(v['mean_iou']):>9s} "
            f"{fmt(v['matched_at_0.5']):>8s} {fmt(v['mean_cosine']):>7s} {fmt(v['mean_cosine_at_0.5']):>7s}"
        )
    s = result["summary"]
    lines.append(
        f"{'mean over ' + str(s['images']) + ' images':24s} {'':5s} {'':5s} {fmt(s['mean_iou']):>9s} "
        f"{fmt(s['matched_at_0.5']):>8s} {fmt(s['mean_cosine']):>7s} {fmt(s['mean_cosine_at_0.5']):>7s}"
    )
    if s["only_ours"] or s["only_reference"]:
        lines.append(f"only ours: {len(s['only_ours'])} images; only in the reference: {len(s['only_reference'])}")
    return "\n".join(lines)
