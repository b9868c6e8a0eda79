"""Training on a catalog dataset: checkpoints record its version, and a resume on changed data is refused."""

import json
import shutil

import yaml

from tests.conftest import run_cli
from tests.data.test_version import rewrite_shard
from tests.trainer import runs


def write_config(tmp_path, demo_dir, catalog, max_steps):
    """The tiny run of tests/trainer/runs.py, its one source named through the catalog."""
    data = {"sources": [{"dataset": "shapes", "weight": 1.0}], "catalogs": [str(catalog)], "num_streams": 4}
    train = {"max_steps": max_steps, "global_batch_size": 0}
    return str(runs.write_config(tmp_path, demo_dir, "cat", data=data, train=train))


def test_checkpoint_records_versions_and_resume_on_changed_data_is_refused(tmp_path, demo_dir):
    shards = tmp_path / "shards"
    shards.mkdir()
    for tar in demo_dir.glob("*.tar"):
        shutil.copy(tar, shards)
    catalog = str(tmp_path / "team.yaml")
    pattern = str(shards / "demo-{000000..000003}.tar")
    add = ["-m", "open_vlm.cli", "data", "add", "shapes", pattern, "--modality", "image_text", "--catalog", catalog]
    assert run_cli(*add).returncode == 0

    out = run_cli("-m", "open_vlm.train", "--config", write_config(tmp_path, demo_dir, catalog, 2))
    assert out.returncode == 0, out.stderr[-3000:]
    checkpoint = tmp_path / "runs/t/cat/checkpoints/step_00000002"
    meta = json.loads((checkpoint / "meta.json").read_text())
    first = yaml.safe_load(open(catalog))["shapes"]["version"]
    assert meta["data_sources"] == [{"name": "shapes", "dataset": "shapes", "version": first}]
    config = yaml.safe_load(meta["config"])
    assert config["data"]["sources"][0]["catalog_file"] == catalog  # the resolved config says where from

    rewrite_shard(str(shards / "demo-000002.tar"), 32)
    assert run_cli(*add, "--replace").returncode == 0
    longer = write_config(tmp_path, demo_dir, catalog, 3)
    out = run_cli("-m", "open_vlm.train", "--config", longer)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"source 'shapes': version {first} in the checkpoint" in out.stderr
    out = run_cli("-m", "open_vlm.train", "--config", longer, "--checkpoint.allow_data_change", "true")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming anyway" in out.stderr and (tmp_path / "runs/t/cat/checkpoints/step_00000003").exists()
