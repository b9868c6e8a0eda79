"""Grid extraction (SigLIP / CLIP patches), the CLI, and extracted shards training a tiny LXMERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from open_vlm.config.schema import DataConfig, ModelConfig, SourceConfig
from open_vlm.extract.grid import grid_boxes
from open_vlm.extract.run import extract
from tests.conftest import REPO, run_cli
from tests.extract.conftest import extract_config
from tests.extract.test_region import npy, read_shard

CONFIGS = REPO / "configs" / "models"


def test_grid_boxes_tile_the_image_row_by_row():
    boxes = grid_boxes(2)
    np.testing.assert_allclose(boxes, [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]])
    four = grid_boxes(4)
    assert four.shape == (16, 4)
    assert np.isclose((four[:, 2:] - four[:, :2]).prod(axis=1).sum(), 1)  # the cells cover the image once


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_grid_extraction_gives_one_region_per_patch(kind, image_shards, tmp_path):
    cfg = extract_config(image_shards[:1], str(tmp_path), None)
    cfg.extract.extractor = "grid"
    cfg.model = ModelConfig(kind=kind, config=str(CONFIGS / f"{kind}_tiny.yaml"))
    assert not extract(cfg).failed
    samples = read_shard(str(tmp_path / "img-00000.tar"))
    assert len(samples) == 3
    for members in samples.values():
        feats, boxes = npy(members["features.npy"]), npy(members["boxes.npy"])
        assert feats.shape == (16, 32)  # 32 px / patch 8 → 4 x 4 (CLIP's class token dropped)
        np.testing.assert_array_equal(boxes, grid_boxes(4))
        assert "classes.npy" not in members


def test_cli_extract_and_config_errors(image_shards, detector_weights, tmp_path):
    bad = run_cli("-m", "open_vlm.cli", "extract", "--extract.num_region", "3")
    assert bad.returncode == 2 and "extract.num_regions" in bad.stderr
    missing = run_cli("-m", "open_vlm.cli", "extract", "--extract.urls", f"[{image_shards[0]}]")
    assert missing.returncode == 2 and "extract.out" in missing.stderr
    ok = run_cli(
        "-m",
        "open_vlm.extract",
        "--extract.urls",
        f"[{image_shards[0]}]",
        "--extract.out",
        str(tmp_path / "out"),
        "--extract.num_regions",
        "5",
        "--extract.region.backbone",
        "resnet18_fpn",
        "--extract.region.weights",
        detector_weights,
        "--extract.region.num_classes",
        "5",
        "--extract.region.representation_size",
        "16",
        "--extract.region.min_size",
        "48",
        "--extract.region.max_size",
        "80",
        "--keep-image",
        "--run.output_dir",
        str(tmp_path / "runs"),
    )
    assert ok.returncode == 0, ok.stderr
    assert "manifest:" in ok.stdout
    members = read_shard(str(tmp_path / "out" / "img-00000.tar"))["000000"]
    assert npy(members["boxes.npy"]).shape == (5, 4) and "png" in members
    assert (tmp_path / "runs" / "open_vlm" / "default" / "config.yaml").exists()


def test_extracted_shards_train_tiny_lxmert(image_shards, detector_weights, tmp_path):
    from open_vlm.data.build import build_loader
    from open_vlm.models.losses import build_loss
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.registry import build_processor
    from tests.tokenize.conftest import make_word_tokenizer

    out = tmp_path / "regions"
    assert not extract(extract_config(image_shards, str(out), detector_weights, k=12)).failed
    tokenizer = make_word_tokenizer()
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="lxmert", config=str(CONFIGS / "lxmert_tiny.yaml")), tokenizer)
    processor, collator = build_processor("lxmert", tokenizer, num_regions=12, max_len=12, mlm_prob=0.5)
    data = DataConfig(
        sources=[SourceConfig(name="regions", urls=[str(out / "img-{00000..00002}.tar")], modality="region_features")],
        batch_size=4,
        num_streams=3,
        shuffle_window=3,
    )
    loader = iter(build_loader(data, seed=0, global_batch=4, image_size=0, process=processor, collate=collator))
    batch = next(loader)
    assert batch["visual_feats"].shape == (4, 12, 16) and batch["visual_attention_mask"].all()
    model, loss_fn = bundle.model, build_loss("lxmert")

    def loss_on(b) -> torch.Tensor:
        return loss_fn(bundle.forward(model, b), b).loss

    model.eval()
    with torch.no_grad():
        before = float(loss_on(batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        optimizer.zero_grad()
        loss = loss_on(batch)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(loss_on(batch))
    assert np.isfinite(before) and after < before
    second = next(loader)  # the loader keeps going over the extracted shards
    assert torch.isfinite(loss_on(second))
