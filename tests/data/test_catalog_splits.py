"""Catalog splits: `{dataset: NAME, split: val}` in data.sources / eval.sources, `data add --split`, eval --split."""

import json
import re
import shutil

import pytest
import yaml

from open_vlm.config.load import ConfigError, load_run_config
from open_vlm.config.schema import DataConfig, SourceConfig
from open_vlm.data.catalog import resolve_sources
from tests.conftest import run_cli


def catalog_with_splits(tmp_path, **extra):
    path = tmp_path / "cat.yaml"
    entry = {
        "urls": ["d/train-{0..3}.tar"],
        "modality": "image_text",
        "splits": {"val": {"urls": ["d/val-0.tar"], "version": "0123456789ab"}, "test": {"urls": "d/test-0.tar"}},
        **extra,
    }
    path.write_text(yaml.safe_dump({"coco_captions": entry}))
    return path


def resolve(catalog, *sources: dict, section="data.sources"):
    data = DataConfig(sources=[SourceConfig(**s) for s in sources], catalogs=[str(catalog)])
    resolve_sources(data, repo_dir=catalog.parent / "no-repo", section=section)
    return data.sources


def test_a_source_reads_the_split_it_names(tmp_path):
    catalog = catalog_with_splits(tmp_path)
    train, val, test = resolve(
        catalog,
        {"dataset": "coco_captions"},
        {"dataset": "coco_captions", "split": "val"},
        {"dataset": "coco_captions", "split": "test", "name": "coco_test"},
    )
    assert train.urls == ["d/train-{0..3}.tar"] and train.name == "coco_captions"
    assert val.urls == ["d/val-0.tar"] and val.split == "val" and val.catalog_file == str(catalog)
    assert test.urls == ["d/test-0.tar"] and test.name == "coco_test"


@pytest.mark.parametrize(
    "source, message",
    [
        (
            {"dataset": "coco_captions", "split": "valid"},
            r"data.sources\[0\].split: unknown split 'valid'; did you mean 'val'",
        ),
        ({"urls": ["x.tar"], "split": "val"}, r"data.sources\[0\].split: only a catalog dataset has splits"),
    ],
)
def test_bad_splits_are_one_line_config_errors(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message):
        resolve(catalog_with_splits(tmp_path), source)


def test_a_missing_split_names_the_ones_there_and_how_to_add_it(tmp_path):
    path = tmp_path / "cat.yaml"
    path.write_text(yaml.safe_dump({"plain": {"urls": ["d/x.tar"]}}))
    with pytest.raises(ConfigError, match=r"has no split 'val' \(it has: train\).*data add plain URLS... --split val"):
        resolve(path, {"dataset": "plain", "split": "val"})


def test_a_catalog_train_split_under_splits_is_refused(tmp_path):
    path = catalog_with_splits(tmp_path)
    values = yaml.safe_load(path.read_text())
    values["coco_captions"]["splits"]["train"] = {"urls": ["d/t.tar"]}
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="unknown split 'train' \\(the train split is the entry's own urls\\)"):
        resolve(path, {"dataset": "coco_captions"})


def test_eval_sources_resolve_their_split_at_config_load(tmp_path):
    catalog = catalog_with_splits(tmp_path)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "data": {"sources": [{"dataset": "coco_captions"}], "catalogs": [str(catalog)]},
                "eval": {"sources": [{"dataset": "coco_captions", "split": "val"}], "every_steps": 10},
            }
        )
    )
    cfg = load_run_config(["--config", str(cfg_path)])
    assert cfg.data.sources[0].urls == ["d/train-{0..3}.tar"]
    assert cfg.eval.sources[0].urls == ["d/val-0.tar"] and cfg.eval.sources[0].name == "coco_captions"


def test_data_add_split_then_eval_reads_it_with_split_val(tmp_path, demo_dir):
    """Train and val shards in one folder: the val split gets a manifest of its own; `eval --split val` reads it."""
    from tests.evaluation.test_eval import zero_shot_args

    shards = tmp_path / "shapes"
    shards.mkdir()
    for i in (0, 1):
        shutil.copy(demo_dir / f"demo-00000{i}.tar", shards)
    catalog = tmp_path / "team.yaml"
    train_url, val_url = str(shards / "demo-000000.tar"), str(shards / "demo-000001.tar")
    base = ["-m", "open_vlm.cli", "data", "add", "shapes"]
    out = run_cli(*base, train_url, "--catalog", str(catalog), "--modality", "image_text")
    assert out.returncode == 0, out.stderr
    out = run_cli(*base, val_url, "--catalog", str(catalog), "--split", "val")
    assert out.returncode == 0, out.stderr
    entry = yaml.safe_load(catalog.read_text())["shapes"]
    assert entry["urls"] == [train_url] and entry["splits"]["val"]["urls"] == [val_url]
    assert entry["splits"]["val"]["manifest"] == str(shards / "manifest.val.json")
    assert len(entry["splits"]["val"]["version"]) == 12
    train_manifest = json.loads((shards / "manifest.json").read_text())["shards"]  # not overwritten by the split
    assert [s["url"] for s in train_manifest] == ["demo-000000.tar"]
    assert [s["url"] for s in json.loads((shards / "manifest.val.json").read_text())["shards"]] == ["demo-000001.tar"]
    out = run_cli("-m", "open_vlm.cli", "data", "show", "shapes", "--catalog", str(catalog))
    assert re.search(rf"^split val +{re.escape(val_url)}$", out.stdout, re.M)

    from open_vlm.evaluation.run import main

    sources = json.dumps([{"dataset": "shapes"}])
    args = zero_shot_args(demo_dir, None, tmp_path / "runs", "--data.catalogs", json.dumps([str(catalog)]))
    args[args.index("--data.sources") + 1] = sources
    args[args.index("--model.pretrained") : args.index("--model.pretrained") + 2] = []
    args += ["--model.config", "configs/models/siglip_tiny.yaml", "--split", "val"]
    assert main(args) == 0
    resolved = yaml.safe_load((tmp_path / "runs/open_vlm/zs/config.yaml").read_text())
    assert resolved["eval"]["sources"][0]["urls"] == [val_url] and resolved["eval"]["sources"][0]["split"] == "val"
