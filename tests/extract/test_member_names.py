"""Shard member names are data: a key with `../` or an absolute path never becomes a path on this machine (the
extraction writer skips and refuses it; view's drawings name their files safely)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from open_vlm.extract.draw import draw_sample_png
from open_vlm.extract.run import extract
from open_vlm.extract.writer import ShardWriter, UnsafeKey, npy_bytes, safe_key
from tests.extract.conftest import extract_config, image_bytes


def hostile_shard(path: Path, escape_to: Path) -> list[str]:
    """A tar shard (written raw: our writer refuses such keys) whose keys climb out and name absolute paths."""
    keys = ["../../escaped", str(escape_to / "absolute"), "a/../../b", "fine"]
    with tarfile.open(path, "w") as tar:
        for i, key in enumerate(keys):
            for suffix, data in (("png", image_bytes(i, (48, 48))), ("txt", b"a red square")):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return keys


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b", "..", "C:/x", "a\\..\\b", "x\0y", ""])
def test_unsafe_keys_are_refused_by_the_writer(tmp_path, key):
    assert not safe_key(key)
    with pytest.raises(UnsafeKey), ShardWriter(str(tmp_path / "out.tar")) as writer:
        writer.write(key, {"txt": b"x"})
    assert not (tmp_path / "out.tar").exists() and safe_key("dir/sub/000001.x")


def test_extraction_skips_keys_that_are_paths_outside(tmp_path, detector_weights):
    """Shown to fail on a broken build: with the key check in `iter_images` removed, the writer refused the first
    sample and the extraction failed (and without the writer's check the output tar held `../../escaped.png`)."""
    inputs, escape_to = tmp_path / "in" / "deep", tmp_path / "elsewhere"
    inputs.mkdir(parents=True)
    hostile_shard(inputs / "h-00000.tar", escape_to)
    out = tmp_path / "out" / "deep"
    report = extract(extract_config([str(inputs / "h-00000.tar")], str(out), detector_weights, k=2))
    assert not report.failed
    with tarfile.open(out / "h-00000.tar") as tar:
        names = tar.getnames()
    assert names and all(n.startswith("fine.") for n in names)
    assert (
        not escape_to.exists() and not (tmp_path / "escaped.png").exists() and not (tmp_path / "out" / "b.png").exists()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def test_view_drawings_stay_in_their_folder(tmp_path):
    folder = Path(
        draw_sample_png(
            {"__key__": "fine", "png": image_bytes(0, (48, 48)), "boxes.npy": npy_bytes(np.zeros((1, 4)))}, "x.tar"
        )
    ).parent
    for key in ("../../../escaped", "/tmp/absolute", "a\0b"):
        sample = {"__key__": key, "png": image_bytes(1, (48, 48)), "boxes.npy": npy_bytes(np.zeros((1, 4)))}
        path = Path(draw_sample_png(sample, f"{tmp_path}/s-00000.tar"))
        assert path.parent == folder and path.exists() and ".." not in path.name.split("-", 1)[0]
        path.unlink()
