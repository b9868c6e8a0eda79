"""Drawing extracted regions on their image (for `open-vlm view` on a `region_features` shard)."""

from __future__ import annotations

import io
import posixpath
import re
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from open_vlm.data.decode import IMAGE_SUFFIXES

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def draw_boxes(image: Image.Image, boxes: np.ndarray, labels: list[str] | None = None) -> Image.Image:
    """`boxes` (K, 4) in [0, 1] drawn on a copy of `image`, scaled by its own width and height."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=np.float64)):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle([x1 * w, y1 * h, x2 * w, y2 * h], outline=colour, width=1)
        if labels:
            draw.text((x1 * w + 2, y1 * h + 1), labels[i], fill=colour)
    return out


def draw_sample_png(sample: dict, url: str, path: str | None = None) -> str | None:
    """Draw a raw extracted sample's boxes on its stored image; the PNG's path, or None without an image."""
    suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
    if suffix is None:
        return None
    boxes = np.load(io.BytesIO(sample["boxes.npy"]), allow_pickle=False)
    labels = None
    if "classes.npy" in sample and "scores.npy" in sample:
        classes = np.load(io.BytesIO(sample["classes.npy"]), allow_pickle=False)
        scores = np.load(io.BytesIO(sample["scores.npy"]), allow_pickle=False)
        labels = [f"{c}:{s:.2f}" for c, s in zip(classes, scores)]
    image = Image.open(io.BytesIO(sample[suffix]))
    if path is None:
        folder = Path(tempfile.gettempdir()) / "open_vlm_view"
        folder.mkdir(parents=True, exist_ok=True)
        stem = posixpath.basename(url).split(".")[0]
        # The key is data from the shard: one plain file name in `folder`, whatever it holds (`../`, `/`, NUL).
        name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{stem}-{sample['__key__']}").lstrip(".")
        path = str(folder / f"{name}.png")
    draw_boxes(image, boxes, labels).save(path, format="PNG")
    return path
