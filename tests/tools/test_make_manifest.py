"""tools/make_manifest.py: exact counts for local and s3:// shards; a corrupt shard is named, nothing written."""

import json

from make_manifest import main

from open_vlm.data.manifest import read_manifest
from tests.conftest import run_cli
from tests.data.shardgen import write_shards
from tests.data.test_s3 import upload


def test_local_shards_match_the_library(tmp_path, capsys):
    urls = write_shards(tmp_path / "src", "m", 3, [5, 7, 2])
    out = tmp_path / "src" / "again.json"
    assert main(["--urls", str(tmp_path / "src" / "m-{00000..00002}.tar"), "--out", str(out), "--quiet"]) == 0
    made, reference = read_manifest(str(out)), read_manifest(str(tmp_path / "src" / "manifest.json"))
    assert [s.num_samples for s in made.shards] == [5, 7, 2]
    assert made.shards == reference.shards
    assert json.loads(out.read_text())["shards"][0]["url"] == "m-00000.tar"  # stored relative
    assert [s.url for s in made.shards] == urls
    assert "3 shards, 14 samples" in capsys.readouterr().out


def test_corrupt_shard_is_named_and_nothing_written(tmp_path, capsys):
    urls = write_shards(tmp_path, "c", 2, 6)
    data = open(urls[1], "rb").read()
    open(urls[1], "wb").write(data[: len(data) // 3])
    out = tmp_path / "out.json"
    assert main(["--urls", *urls, "--out", str(out), "--quiet", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert urls[1] in err and "corrupt or truncated" in err
    assert not out.exists()


def test_missing_shard(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main(["--urls", str(tmp_path / "nope-0.tar"), "--out", str(out), "--quiet"]) == 1
    assert "nope-0.tar" in capsys.readouterr().err


def test_s3_shards(tmp_path, s3_endpoint, s3_bucket):
    remote = upload(write_shards(tmp_path, "s", 2, 4), s3_bucket, s3_endpoint)
    out = f"s3://{s3_bucket}/shards/manifest.json"
    assert main(["--urls", *remote, "--out", out, "--quiet"]) == 0
    manifest = read_manifest(out)
    assert [s.url for s in manifest.shards] == remote
    assert [s.num_samples for s in manifest.shards] == [4, 4]
    assert all(s.etag for s in manifest.shards)


def test_help():
    out = run_cli("tools/make_manifest.py", "--help")
    assert out.returncode == 0 and "--workers" in out.stdout
