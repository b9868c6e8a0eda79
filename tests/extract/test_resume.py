"""Resumed extraction (a crash mid-shard, a killed run's partial file) writes byte-identical shards; S3 in and out."""

from __future__ import annotations

import json

import pytest

from open_vlm.extract import writer as writer_module
from open_vlm.extract.run import extract
from tests.extract.conftest import extract_config


def snapshot(folder) -> dict[str, bytes]:
    """Every output file, but the manifest's index and sample offsets: caches stamped with the manifest's mtime."""
    caches = (".index.", ".offsets.")
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not any(c in p.name for c in caches)
    }


def test_crash_and_partial_output_resume_byte_identical(image_shards, detector_weights, tmp_path, monkeypatch):
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert not extract(extract_config(image_shards, str(ref), detector_weights, k=6)).failed
    want = snapshot(ref)
    assert set(want) == {"img-00000.tar", "img-00001.tar", "img-00002.tar", "manifest.json"}

    # Run 1 crashes in the middle of the second shard.
    calls = {"n": 0}
    original = writer_module.ShardWriter.write

    def crashing(self, key, members):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")
        return original(self, key, members)

    monkeypatch.setattr(writer_module.ShardWriter, "write", crashing)
    with pytest.raises(RuntimeError, match="killed"):
        extract(extract_config(image_shards, str(resumed), detector_weights, k=6))
    monkeypatch.setattr(writer_module.ShardWriter, "write", original)
    assert sorted(p.name for p in resumed.iterdir()) == ["img-00000.tar"]  # only committed shards are visible
    first = (resumed / "img-00000.tar").stat().st_mtime_ns
    # A kill -9 leaves the temporary file behind: garbage the next run must overwrite, not trust.
    (resumed / ".img-00001.tar.partial").write_bytes(b"half a tar")

    result = extract(extract_config(image_shards, str(resumed), detector_weights, k=6))
    assert [p.rsplit("/", 1)[1] for p in result.skipped] == ["img-00000.tar"]
    assert [p.rsplit("/", 1)[1] for p in result.written] == ["img-00001.tar", "img-00002.tar"]
    assert (resumed / "img-00000.tar").stat().st_mtime_ns == first
    assert snapshot(resumed) == want


def test_ranks_take_every_world_th_shard(image_shards, detector_weights, tmp_path):
    cfg = extract_config(image_shards, str(tmp_path), detector_weights, k=4)
    r1 = extract(cfg, rank=1, world=2)
    assert [p.rsplit("/", 1)[1] for p in r1.written] == ["img-00001.tar"] and r1.manifest is None
    r0 = extract(cfg, rank=0, world=2)
    assert [p.rsplit("/", 1)[1] for p in r0.written] == ["img-00000.tar", "img-00002.tar"]
    assert r0.manifest and len(json.loads((tmp_path / "manifest.json").read_text())["shards"]) == 3


def test_s3_inputs_weights_and_outputs(image_shards, detector_weights, s3_bucket, tmp_path):
    import s3fs

    from open_vlm.data.manifest import read_manifest

    fs = s3fs.S3FileSystem()
    fs.put(image_shards[0], f"{s3_bucket}/in/img-00000.tar")
    fs.put(detector_weights, f"{s3_bucket}/w/detector.pt")
    s3fs.S3FileSystem.clear_instance_cache()
    out = f"s3://{s3_bucket}/out"
    cfg = extract_config([f"s3://{s3_bucket}/in/img-00000.tar"], out, f"s3://{s3_bucket}/w/detector.pt", k=6)
    result = extract(cfg)
    assert result.written == [f"{out}/img-00000.tar"]
    assert read_manifest(f"{out}/manifest.json").shards[0].num_samples == 3
    local = extract(extract_config(image_shards[:1], str(tmp_path), detector_weights, k=6))
    assert fs.cat_file(f"{s3_bucket}/out/img-00000.tar") == (tmp_path / "img-00000.tar").read_bytes()
    assert local.written and extract(cfg).skipped == [f"{out}/img-00000.tar"]
