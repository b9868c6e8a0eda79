"""`resnet101_c4`: 2048-d bottom-up-attention box features that LXMERT reads, and detectron2 weights converted."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from open_vlm.extract.region import build_detector
from open_vlm.extract.run import extract
from tests.extract.conftest import extract_config, region_config, write_image_shards
from tests.extract.test_region import npy, read_shard

NUM_CLASSES = 6  # foreground classes of the small test detector (Visual Genome has 1600)
NORM = ("weight", "bias", "running_mean", "running_var")


def detectron2_state(depths: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights named and shaped as detectron2's R-C4 Faster R-CNN of py-bottom-up-attention (ResNet stem and
    res2..res4 under `backbone.`, res5 under `roi_heads.`, StandardRPNHead with 512 hidden channels, the box
    predictor with the background class last and the attribute head it also carries)."""
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        state[f"{name}.weight"] = rng.standard_normal((out, inp, k, k)).astype(np.float32) * 0.05
        for leaf in NORM:
            state[f"{name}.norm.{leaf}"] = rng.random(out).astype(np.float32) + 0.5

    conv("backbone.stem.conv1", 64, 3, 7)
    inp = 64
    stages = [("backbone.res2", depths[0], 64), ("backbone.res3", depths[1], 128), ("backbone.res4", depths[2], 256)]
    for prefix, blocks, width in [*stages, ("roi_heads.res5", 3, 512)]:
        for i in range(blocks):
            if i == 0:
                conv(f"{prefix}.0.shortcut", width * 4, inp, 1)
            conv(f"{prefix}.{i}.conv1", width, inp, 1)
            conv(f"{prefix}.{i}.conv2", width, width, 3)
            conv(f"{prefix}.{i}.conv3", width * 4, width, 1)
            inp = width * 4
        if prefix == "backbone.res4":
            inp = 1024  # res5 reads the C4 map
    for name, out, inp_, k in (
        ("conv", 512, 1024, 3),
        ("objectness_logits", 12, 512, 1),
        ("anchor_deltas", 48, 512, 1),
    ):
        state[f"proposal_generator.rpn_head.{name}.weight"] = rng.standard_normal((out, inp_, k, k)).astype(np.float32)
        state[f"proposal_generator.rpn_head.{name}.bias"] = rng.standard_normal(out).astype(np.float32)
    predictor = {"cls_score": NUM_CLASSES + 1, "bbox_pred": NUM_CLASSES * 4, "fc_attr": 512, "attr_score": 401}
    for name, out in predictor.items():
        state[f"roi_heads.box_predictor.{name}.weight"] = rng.standard_normal((out, 2048)).astype(np.float32)
        state[f"roi_heads.box_predictor.{name}.bias"] = rng.standard_normal(out).astype(np.float32)
    state["roi_heads.box_predictor.cls_embedding.weight"] = rng.standard_normal((NUM_CLASSES + 1, 256))
    return state


def write_pkl(state: dict, path) -> str:
    """As py-bottom-up-attention ships its weights: a pickle of numpy arrays under `model`."""
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    return str(path)


def test_detectron2_weights_load_into_the_c4_detector(tmp_path):
    from open_vlm.extract.bottom_up_weights import convert_detectron2_c4

    d2 = detectron2_state((3, 4, 6))
    cfg = region_config(backbone="resnet50_c4", num_classes=NUM_CLASSES + 1, weights=write_pkl(d2, tmp_path / "d2.pkl"))
    model = build_detector(cfg)  # strict load: every parameter and buffer of the detector comes from the file
    state = model.state_dict()
    torch.testing.assert_close(
        state["backbone.body.conv1.weight"][:, 0], torch.from_numpy(d2["backbone.stem.conv1.weight"][:, 2])
    )
    torch.testing.assert_close(
        state["roi_heads.box_head.res5.2.bn3.running_var"],
        torch.from_numpy(d2["roi_heads.res5.2.conv3.norm.running_var"]),
    )
    scores = torch.from_numpy(d2["roi_heads.box_predictor.cls_score.weight"])
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"][0], scores[-1])  # background first
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"][1:], scores[:-1])
    boxes = state["roi_heads.box_predictor.bbox_pred.weight"]
    assert boxes.shape[0] == (NUM_CLASSES + 1) * 4 and not boxes[:4].any()
    torch.testing.assert_close(boxes[4:], torch.from_numpy(d2["roi_heads.box_predictor.bbox_pred.weight"]))

    # Each torchvision anchor's objectness/deltas come from the detectron2 channel of the same anchor shape:
    # detectron2 enumerates sizes (64..512) outer, ratios (h/w 0.5, 1, 2) inner.
    objectness = torch.from_numpy(d2["proposal_generator.rpn_head.objectness_logits.weight"])
    deltas = torch.from_numpy(d2["proposal_generator.rpn_head.anchor_deltas.weight"])
    for t, (x1, y1, x2, y2) in enumerate(model.rpn.anchor_generator.cell_anchors[0].tolist()):
        size, ratio = math.sqrt((x2 - x1) * (y2 - y1)), (y2 - y1) / (x2 - x1)
        s = min(range(4), key=lambda i: abs(math.log(size / (64 * 2**i))))
        r = min(range(3), key=lambda i: abs(math.log(ratio / (0.5, 1.0, 2.0)[i])))
        d = s * 3 + r
        torch.testing.assert_close(state["rpn.head.cls_logits.weight"][t], objectness[d])
        torch.testing.assert_close(state["rpn.head.bbox_pred.weight"][4 * t : 4 * t + 4], deltas[4 * d : 4 * d + 4])
    assert convert_detectron2_c4({k: torch.from_numpy(np.asarray(v)) for k, v in d2.items()}).keys() == state.keys()


def test_pickles_holding_anything_but_arrays_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"backbone.stem.conv1.weight": Payload()}}))
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        build_detector(region_config(backbone="resnet50_c4", weights=str(path)))


def test_the_converter_tool_writes_a_state_dict_the_detector_loads(tmp_path):
    from convert_bottom_up_attention import main

    d2 = detectron2_state((3, 4, 6), seed=1)
    out = tmp_path / "vg_c4.safetensors"
    assert main([write_pkl(d2, tmp_path / "d2.pkl"), str(out)]) == 0
    model = build_detector(region_config(backbone="resnet50_c4", num_classes=NUM_CLASSES + 1, weights=str(out)))
    torch.testing.assert_close(
        model.state_dict()["backbone.body.layer3.5.conv2.weight"], torch.from_numpy(d2["backbone.res4.5.conv2.weight"])
    )
    assert main([str(tmp_path / "missing.pkl"), str(out)]) == 2


def test_resnet101_c4_features_are_2048_wide_and_lxmert_reads_them(tmp_path):
    from transformers import LxmertConfig, LxmertModel

    urls = write_image_shards(tmp_path / "images", num_shards=1, per_shard=2)
    cfg = extract_config(urls, str(tmp_path / "out"), None, k=4, backbone="resnet101_c4", rpn_post_nms_top_n=4)
    assert extract(cfg).written
    samples = read_shard(str(tmp_path / "out" / "img-00000.tar"))
    features = np.stack([npy(s["features.npy"]) for s in samples.values()])
    boxes = np.stack([npy(s["boxes.npy"]) for s in samples.values()])
    assert features.shape == (2, 4, 2048) and boxes.shape == (2, 4, 4)
    config = LxmertConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_attention_heads=2, l_layers=1, x_layers=1, r_layers=1
    )
    assert config.visual_feat_dim == 2048 and config.visual_pos_dim == 4  # pretrained LXMERT's input sizes
    with torch.no_grad():
        out = LxmertModel(config)(
            input_ids=torch.tensor([[1, 5, 6, 2]] * 2),
            visual_feats=torch.from_numpy(features),
            visual_pos=torch.from_numpy(boxes),
        )
    assert out.vision_output.shape == (2, 4, 32) and torch.isfinite(out.pooled_output).all()
