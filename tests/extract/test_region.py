"""Region selection (NMS relaxation, padding) and end-to-end region extraction: K boxes, normalised boxes, ids."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from open_vlm.extract.region import iou_schedule, select_regions
from open_vlm.extract.run import extract
from open_vlm.extract.writer import image_id
from tests.extract.conftest import SIZES, extract_config


def read_shard(path: str) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, suffix = member.name.split(".", 1)
            samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return samples


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# A (score .9), B (.8) overlaps A at IoU .95, C (.7) overlaps A at .75 and B at ~.79, D (.6) apart, E (.1) apart.
ROIS = torch.tensor(
    [[0, 0, 10, 10], [0, 0, 10, 9.5], [0, 0, 10, 7.5], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32
)
SCORES = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6], [0.1, 0.0]])


def test_iou_schedule_reaches_one():
    assert iou_schedule(0.5, 0.1) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert iou_schedule(0.5, 0.0) == [0.5]


def test_nms_threshold_is_raised_until_k_survive():
    two = select_regions(ROIS, SCORES, 2, 0.5, 0.5, 0.1)
    assert two.index.tolist() == [0, 3] and two.nms_iou == 0.5 and two.num_detected == 2
    three = select_regions(ROIS, SCORES, 3, 0.5, 0.5, 0.1)  # C survives once IoU .75 is allowed
    assert three.index.tolist() == [0, 2, 3] and three.nms_iou == 0.8
    four = select_regions(ROIS, SCORES, 4, 0.5, 0.5, 0.1)
    assert four.index.tolist() == [0, 1, 2, 3] and four.nms_iou == 1.0
    assert four.info()["padding"] == {"below_threshold": 0, "whole_image": 0}


def test_fewer_than_k_are_padded_below_threshold_then_whole_image():
    sel = select_regions(ROIS, SCORES, 7, 0.5, 0.5, 0.1)
    # 4 detections, then E (below the score threshold), then the whole-image row (index 5 = len(rois)) twice.
    assert sel.index.tolist() == [0, 1, 2, 3, 4, 5, 5]
    assert sel.info() == {"nms_iou": 1.0, "num_detected": 4, "padding": {"below_threshold": 1, "whole_image": 2}}
    nothing = select_regions(ROIS, SCORES, 3, 0.95, 0.5, 0.1)
    assert nothing.num_detected == 0 and nothing.index.tolist() == [0, 1, 2]


def test_image_ids_keep_leading_zeros_unless_stripped():
    assert image_id("000000397133") == "000000397133"
    assert image_id("coco/000000397133", strip_leading_zeros=True) == "397133"
    assert image_id("COCO_val2014_000000000042", strip_leading_zeros=True) == "42"
    assert image_id("0000", strip_leading_zeros=True) == "0"
    assert image_id("cat_photo", strip_leading_zeros=True) == "cat_photo"


@pytest.fixture(scope="module")
def extracted(image_shards, detector_weights, tmp_path_factory):
    """Image shards → region shards with K = 12 but only 8 proposals per image: every image needs padding."""
    out = tmp_path_factory.mktemp("regions")
    cfg = extract_config(image_shards, str(out), detector_weights, k=12)
    cfg.extract.keep_image = True
    result = extract(cfg)
    assert not result.failed
    return out, image_shards


def test_exactly_k_normalised_boxes_per_image(extracted):
    out, inputs = extracted
    seen = 0
    for shard, url in enumerate(inputs):
        samples = read_shard(str(out / url.rsplit("/", 1)[1]))
        assert list(samples) == [f"000{shard}{i:02d}" for i in range(3)]  # same keys, same order
        for key, members in samples.items():
            meta = json.loads(members["json"])
            w, h = SIZES[seen % len(SIZES)]
            seen += 1
            feats, boxes = npy(members["features.npy"]), npy(members["boxes.npy"])
            classes, scores = npy(members["classes.npy"]), npy(members["scores.npy"])
            assert feats.shape == (12, 16) and feats.dtype == np.float32 and np.isfinite(feats).all()
            assert boxes.shape == (12, 4) and classes.shape == (12,) and scores.shape == (12,)
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
            assert ((classes >= 1) & (classes < 5)).all()
            assert (meta["image_id"], meta["width"], meta["height"]) == (key, w, h)
            assert isinstance(meta["image_id"], str) and meta["image_id"].startswith("000")
            padding = meta["extraction"]["padding"]
            assert meta["extraction"]["num_detected"] == 0 and meta["extraction"]["nms_iou"] == 1.0
            assert padding["below_threshold"] + padding["whole_image"] == 12 and padding["whole_image"] >= 4
            # Whole-image padding is exactly [0, 0, 1, 1] for wide and tall images: boxes follow the image's
            # own width and height (normalising x by the height would give 64/40 here).
            np.testing.assert_array_equal(boxes[-padding["whole_image"] :], [[0, 0, 1, 1]] * padding["whole_image"])
            pixel = boxes * np.array([w, h, w, h])
            assert (pixel[:, 2] <= w + 1e-3).all() and (pixel[:, 3] <= h + 1e-3).all()
            assert members["txt"].decode().startswith("a ") and json.loads(members["json"])["colour"]
            assert "png" in members  # keep_image
    assert seen == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [3, 3, 3]


def test_k_detections_without_padding_when_enough_survive(image_shards, detector_weights, tmp_path):
    cfg = extract_config(image_shards[:1], str(tmp_path), detector_weights, k=4, score_thresh=0.0)
    cfg.extract.strip_leading_zeros = True
    assert not extract(cfg).failed
    for key, members in read_shard(str(tmp_path / "img-00000.tar")).items():
        meta = json.loads(members["json"])
        assert meta["extraction"]["num_detected"] == 4 and meta["extraction"]["nms_iou"] == 0.5
        assert meta["extraction"]["padding"] == {"below_threshold": 0, "whole_image": 0}
        assert meta["image_id"] == str(int(key))  # stripped; the key itself is unchanged
        scores = npy(members["scores.npy"])
        assert (np.diff(scores) <= 0).all()  # ranked by score
        assert npy(members["boxes.npy"]).shape == (4, 4)


def test_view_draws_boxes_on_the_kept_image(extracted, tmp_path):
    from PIL import Image

    from open_vlm.extract.draw import PALETTE
    from open_vlm.view import view

    out, _ = extracted
    png = tmp_path / "boxes.png"
    info = view(str(out / "img-00000.tar"), boxes_png=str(png), index=1)
    assert info["boxes_png"] == str(png)
    members = read_shard(str(out / "img-00000.tar"))["000001"]
    drawn = Image.open(png).convert("RGB")
    assert drawn.size == (40, 64)  # sample 1 is the tall image
    x1, y1 = (npy(members["boxes.npy"])[0][:2] * np.array([40, 64])).astype(int)
    assert drawn.getpixel((min(int(x1), 39), min(int(y1), 63))) in [tuple(c) for c in PALETTE]
