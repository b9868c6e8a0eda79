"""`open-vlm extract --compare REF`: our boxes and features against another extractor's, in every reference format."""

from __future__ import annotations

import base64
import csv
import json

import numpy as np
import pytest
import yaml

from open_vlm.extract.compare import compare, read_reference, read_shards
from open_vlm.extract.run import extract, main
from tests.extract.conftest import extract_config, region_config
from tests.extract.test_region import npy, read_shard

K = 6


@pytest.fixture(scope="module")
def ours(image_shards, detector_weights, tmp_path_factory) -> dict:
    """Our extraction of the first image shard: config, output folder and, per image id, (boxes, features, w, h)."""
    out = tmp_path_factory.mktemp("ours")
    cfg = extract_config(image_shards[:1], str(out), detector_weights, k=K)
    assert extract(cfg).manifest
    regions = {}
    for sample in read_shard(str(out / "img-00000.tar")).values():
        meta = json.loads(sample["json"])
        regions[meta["image_id"]] = (
            npy(sample["boxes.npy"]),
            npy(sample["features.npy"]),
            meta["width"],
            meta["height"],
        )
    return {"cfg": cfg, "out": out, "regions": regions}


def coco_id(image_id: str) -> str:
    return f"COCO_val2014_{int(image_id):012d}"  # the same trailing number as our "00000"-style id


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.float32).tobytes()).decode()


def reference(regions: dict, perturb) -> dict:
    """Per image: pixel boxes and features of a "reference extractor" made from ours by `perturb`."""
    out = {}
    for image_id, (boxes, features, w, h) in regions.items():
        ref_boxes, ref_features = perturb(boxes, features)
        out[image_id] = (ref_boxes * np.array([w, h, w, h], dtype=np.float32), ref_features, w, h)
    return out


def write_lxmert_tsv(ref: dict, path) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        for image_id, (boxes, features, w, h) in ref.items():
            k = len(boxes)
            ids, conf = base64.b64encode(np.zeros(k, np.int64).tobytes()).decode(), b64(np.ones(k))
            writer.writerow([coco_id(image_id), h, w, ids, conf, ids, conf, k, b64(boxes), b64(features)])
    return str(path)


def write_generate_tsv(ref: dict, path) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        for image_id, (boxes, features, w, h) in ref.items():
            writer.writerow([int(image_id), w, h, len(boxes), b64(boxes), b64(features)])
    return str(path)


def write_npz_folder(ref: dict, folder) -> str:
    folder.mkdir()
    for image_id, (boxes, features, w, h) in ref.items():
        info = np.array({"objects_id": [1, 2]}, dtype=object)  # a pickled dict, as the tool writes: never read
        np.savez_compressed(
            folder / f"{image_id}.npz", x=features, bbox=boxes, num_bbox=len(boxes), image_h=h, image_w=w, info=info
        )
    return str(folder)


def shuffled_and_scaled(boxes, features):
    """The same regions in another order, features scaled: every pair should match exactly."""
    order = np.random.default_rng(0).permutation(len(boxes))
    return boxes[order], 3.0 * features[order]


WRITERS = {"lxmert_tsv": write_lxmert_tsv, "generate_tsv": write_generate_tsv, "npz": write_npz_folder}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_the_same_regions_in_another_order_match_exactly(ours, tmp_path, fmt):
    name = {"lxmert_tsv": "ref.tsv", "generate_tsv": "ref.tsv", "npz": "features"}[fmt]  # npz: a folder of files
    ref_path = WRITERS[fmt](reference(ours["regions"], shuffled_and_scaled), tmp_path / name)
    result = compare(read_shards(str(ours["out"])), read_reference(ref_path))
    summary = result["summary"]
    assert summary["images"] == len(ours["regions"]) and not summary["only_ours"] and not summary["only_reference"]
    assert summary["mean_iou"] == pytest.approx(1.0, abs=1e-5)
    assert summary["matched_at_0.5"] == 1.0
    assert summary["mean_cosine"] == pytest.approx(1.0, abs=1e-5)


def test_shifted_boxes_and_flipped_features_give_their_iou_and_cosine(ours, tmp_path):
    """Each box moved right by a quarter of its width: IoU (w - w/4) / (w + w/4) = 0.6 for every pair; half the
    features negated: mean cosine 0. Both computed here from geometry, not by the code under test."""

    def shift_and_flip(boxes, features):
        boxes = boxes.copy()
        widths = boxes[:, 2] - boxes[:, 0]
        boxes[:, [0, 2]] += widths[:, None] / 4
        signs = np.where(np.arange(len(features)) % 2 == 0, 1.0, -1.0)[:, None]
        return boxes, (features * signs).astype(np.float32)

    # distinct, non-overlapping boxes so that the best one-to-one pairing is each box with its own shifted copy
    regions = {
        image_id: (np.array([[0.1 * i, 0.1, 0.1 * i + 0.05, 0.5] for i in range(K)], np.float32), f, w, h)
        for image_id, (_, f, w, h) in ours["regions"].items()
    }
    ref = read_reference(write_npz_folder(reference(regions, shift_and_flip), tmp_path / "npz"))
    mine = {i: read_shards(str(ours["out"]))[i] for i in regions}
    for image_id, (boxes, _, _, _) in regions.items():
        mine[image_id].boxes = boxes
    result = compare(mine, ref)
    for values in result["images"].values():
        assert values["mean_iou"] == pytest.approx(0.6, abs=1e-4)
        assert values["mean_cosine"] == pytest.approx(0.0, abs=1e-5)
        assert values["matched_at_0.5"] == 1.0 and values["mean_cosine_at_0.5"] == pytest.approx(0.0, abs=1e-5)


def test_cli_compares_after_extracting_and_reports_unmatched_images(ours, tmp_path, capsys):
    ref = reference(ours["regions"], shuffled_and_scaled)
    dropped = sorted(ref)[0]
    del ref[dropped]
    ref["999999"] = next(iter(ref.values()))
    tsv = write_lxmert_tsv(ref, tmp_path / "ref.tsv")
    cfg = ours["cfg"]
    config = tmp_path / "extract.yaml"
    region = {k: v for k, v in vars(region_config(weights=cfg.extract.region.weights)).items()}
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"output_dir": str(tmp_path / "runs"), "name": "cmp"},
                "extract": {"urls": cfg.extract.urls, "out": str(ours["out"]), "num_regions": K, "region": region},
            }
        )
    )
    assert main(["--config", str(config), "--compare", tsv]) == 0
    printed = capsys.readouterr().out
    assert "mean over 2 images" in printed and "only ours: 1 images; only in the reference: 1" in printed
    report = json.loads((tmp_path / "runs" / "open_vlm" / "cmp" / "compare.json").read_text())
    assert report["summary"]["only_ours"] == [dropped] and report["summary"]["only_reference"] == [coco_id("999999")]
    assert report["summary"]["mean_iou"] == pytest.approx(1.0, abs=1e-5)
    assert main(["--config", str(config), "--compare", str(tmp_path / "nothing.tsv")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_our_own_shards_are_a_reference_too(ours):
    out = ours["out"]
    for ref in (str(out), str(out / "img-00000.tar"), str(out / "img-{00000..00000}.tar")):
        summary = compare(read_shards(str(out)), read_reference(ref))["summary"]
        assert summary["images"] == len(ours["regions"]) and summary["mean_iou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a .tsv, .npz or .tar"):
        read_reference(str(out / "manifest.json"))
