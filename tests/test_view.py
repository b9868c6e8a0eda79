"""`open-vlm view` on a shard, a manifest and a run folder."""

import json

from tests.conftest import run_cli


def test_view_shard_and_manifest(demo_dir):
    out = run_cli("-m", "open_vlm.cli", "view", str(demo_dir / "demo-000001.tar"), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["num_samples"] == 32 and info["fields"] == {"jpg": 32, "txt": 32, "json": 32}
    assert info["first"][0]["__key__"] == "000001_00000" and info["first"][0]["txt"].startswith("a ")
    out = run_cli("-m", "open_vlm.cli", "view", str(demo_dir / "manifest.json"))
    assert out.returncode == 0 and "4 shards, 128 samples" in out.stdout


def test_view_unknown_path_is_a_clear_error(tmp_path):
    out = run_cli("-m", "open_vlm.cli", "view", str(tmp_path / "nothing.bin"))
    assert out.returncode == 2 and "don't know what" in out.stderr
