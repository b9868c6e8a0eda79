"""tools/make_shards.py: shards from an image folder + captions (jsonl, csv) or from jpg/txt pairs."""

import io
import json

import pytest
from make_shards import main, sample_key
from PIL import Image

from open_vlm.data.manifest import read_manifest
from open_vlm.data.shards import iter_tar_samples
from tests.conftest import run_cli


def write_image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path, format="JPEG")


def read_all(out):
    manifest = read_manifest(str(out / "manifest.json"))
    samples = []
    for shard in manifest.shards:
        with open(shard.url, "rb") as f:
            samples.extend(iter_tar_samples(f, shard.url))
    return manifest, samples


def test_key_sanitising():
    assert sample_key("a/b.c/img.v2.jpg") == "a_b_c_img_v2"
    assert sample_key("x y+z.png") == "x_y_z"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_and_captions(tmp_path, fmt):
    images = tmp_path / "images"
    names = [f"sub/im.{i}.jpg" for i in range(7)]
    for i, name in enumerate(names):
        write_image(images / name, i * 10)
    if fmt == "jsonl":
        captions = tmp_path / "captions.jsonl"
        captions.write_text("\n".join(json.dumps({"image": n, "caption": f"cap {i}"}) for i, n in enumerate(names)))
    else:
        captions = tmp_path / "captions.csv"
        captions.write_text("image,caption\n" + "".join(f'{n},"cap, {i}"\n' for i, n in enumerate(names)))
    out = tmp_path / "out"
    args = ["--images", str(images), "--captions", str(captions), "--out", str(out), "--prefix", "p"]
    assert main([*args, "--maxcount", "3", "--quiet"]) == 0
    manifest, samples = read_all(out)
    assert [s.num_samples for s in manifest.shards] == [3, 3, 1]
    assert [s.url.rsplit("/", 1)[1] for s in manifest.shards] == ["p-000000.tar", "p-000001.tar", "p-000002.tar"]
    assert [s["__key__"] for s in samples] == [f"sub_im_{i}" for i in range(7)]
    sep = " " if fmt == "jsonl" else ", "
    assert [s["txt"].decode() for s in samples] == [f"cap{sep}{i}" for i in range(7)]
    assert samples[3]["jpg"] == (images / names[3]).read_bytes()  # bytes as they were
    assert Image.open(io.BytesIO(samples[3]["jpg"])).size == (8, 8)


def test_pairs_and_maxsize(tmp_path):
    src = tmp_path / "pairs"
    for i in range(5):
        write_image(src / f"d{i % 2}" / f"n{i}.jpg", i)
        (src / f"d{i % 2}" / f"n{i}.txt").write_text(f"caption {i}\n")
    out = tmp_path / "out"
    assert main(["--pairs", str(src), "--out", str(out), "--maxsize", "1", "--quiet"]) == 0
    manifest, samples = read_all(out)
    assert [s.num_samples for s in manifest.shards] == [1] * 5  # every sample overflows a 1-byte shard
    assert sorted(s["__key__"] for s in samples) == sorted(f"d{i % 2}_n{i}" for i in range(5))
    assert {s["txt"].decode() for s in samples} == {f"caption {i}" for i in range(5)}


def test_bad_inputs(tmp_path, capsys):
    src = tmp_path / "pairs"
    write_image(src / "a.jpg", 1)
    assert main(["--pairs", str(src), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "a.jpg: no caption file a.txt" in capsys.readouterr().err
    captions = tmp_path / "c.jsonl"
    captions.write_text('{"image": "missing.jpg", "caption": "x"}\n')
    assert main(["--images", str(src), "--captions", str(captions), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "missing.jpg not found" in capsys.readouterr().err
    captions.write_text('{"img": "a.jpg"}\n')
    assert main(["--images", str(src), "--captions", str(captions), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "c.jsonl:1" in capsys.readouterr().err


def test_help():
    out = run_cli("tools/make_shards.py", "--help")
    assert out.returncode == 0 and "--maxcount" in out.stdout
