"""`open-vlm data add|list|show|verify`: registering local and S3 shards, and finding damaged ones."""

import tarfile

import s3fs
import yaml

from open_vlm.cli import main
from open_vlm.data.catalog import load_catalog, user_catalog_path
from open_vlm.data.manifest import read_manifest
from open_vlm.data.version import manifest_version
from tests.data.shardgen import write_shards
from tests.data.test_s3 import upload
from tests.data.test_version import rewrite_shard


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["data", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def row(listing: str, name: str) -> list[str]:
    return next(line.split() for line in listing.splitlines() if line.split()[:1] == [name])


def test_add_local_shards_to_the_user_catalog(tmp_path, capsys, monkeypatch):
    write_shards(tmp_path / "shards", "x", 3, [3, 5, 4])
    (tmp_path / "shards" / "manifest.json").unlink()  # `add` builds it
    monkeypatch.chdir(tmp_path)  # a relative pattern is stored absolute
    code, out, err = cli(
        capsys, "add", "shapes", "shards/x-{00000..00002}.tar", "--modality", "image_text", "--task", "captioning"
    )
    assert code == 0, err
    manifest = read_manifest(str(tmp_path / "shards" / "manifest.json"))
    assert [s.num_samples for s in manifest.shards] == [3, 5, 4]
    stored = yaml.safe_load(user_catalog_path().read_text())["shapes"]
    assert stored["urls"] == [str(tmp_path / "shards" / "x-{00000..00002}.tar")]
    assert stored["version"] == manifest_version(manifest)
    code, out, _ = cli(capsys, "list")
    assert row(out, "shapes")[:5] == ["shapes", "image_text", "captioning", "12", stored["version"]]
    code, out, _ = cli(capsys, "show", "shapes")
    assert code == 0 and "samples      12" in out and str(user_catalog_path()) in out
    # the same name again needs --replace; a task the catalog does not know is refused
    code, _, err = cli(capsys, "add", "shapes", "shards/x-00000.tar", "--modality", "image_text")
    assert code == 2 and "--replace" in err
    code, _, err = cli(capsys, "add", "other", "shards/x-00000.tar", "--modality", "text", "--task", "captions")
    assert code == 2 and "unknown task" in err


def test_add_s3_shards_to_a_chosen_catalog(tmp_path, capsys, s3_endpoint, s3_bucket):
    local = write_shards(tmp_path / "local", "s", 2, [4, 6])
    upload(local, s3_bucket, s3_endpoint)
    catalog = f"s3://{s3_bucket}/catalogs/team.yaml"
    pattern = f"s3://{s3_bucket}/shards/s-{{00000..00001}}.tar"
    code, out, err = cli(capsys, "add", "s3set", pattern, "--modality", "image_text", "--catalog", catalog)
    assert code == 0, err
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    assert fs.exists(f"{s3_bucket}/shards/manifest.json") and not user_catalog_path().exists()
    manifest = read_manifest(f"s3://{s3_bucket}/shards/manifest.json")
    assert [s.num_samples for s in manifest.shards] == [4, 6] and all(s.etag for s in manifest.shards)
    # the same bytes on disk and on S3 are the same version
    assert manifest_version(manifest) == manifest_version(read_manifest(str(tmp_path / "local" / "manifest.json")))
    assert load_catalog([catalog]).get("s3set").urls == [pattern]
    code, out, _ = cli(capsys, "list", "--catalog", catalog)
    assert row(out, "s3set")[3] == "10" and out.rstrip().endswith(catalog)
    code, out, _ = cli(capsys, "verify", "s3set", "--catalog", catalog)
    assert code == 0, out


def member_offset(url: str, index: int) -> int:
    """Byte offset of the header of the tar's `index`-th member (a clean cut between members)."""
    with tarfile.open(url) as tar:
        return tar.getmembers()[index].offset


def problems(out: str) -> dict[str, str]:
    """url -> kind from `data verify` output lines."""
    kinds = ("missing", "truncated", "changed", "unlisted")
    rows = [line.split() for line in out.splitlines()]
    return {row[1]: row[0] for row in rows if row and row[0] in kinds}


def test_verify_finds_truncated_missing_and_changed_shards(tmp_path, capsys):
    urls = write_shards(tmp_path / "v", "v", 5, 6)
    cli(capsys, "add", "vset", str(tmp_path / "v" / "v-{00000..00004}.tar"), "--modality", "image_text")
    code, out, _ = cli(capsys, "verify", "vset")
    assert code == 0 and "0 problem(s)" in out
    with open(urls[0], "r+b") as f:  # cut inside a member
        f.truncate(member_offset(urls[0], 5) + 700)
    with open(urls[1], "r+b") as f:  # cut between members: still a readable tar, with fewer samples
        f.truncate(member_offset(urls[1], 6))
    (tmp_path / "v" / "v-00002.tar").unlink()
    rewrite_shard(urls[3], 6)
    code, out, _ = cli(capsys, "verify", "vset")
    found = problems(out)
    assert code == 1, out
    assert found == {urls[0]: "truncated", urls[1]: "truncated", urls[2]: "missing", urls[3]: "changed"}
    assert "5 shard(s) checked, 4 problem(s)" in out
    code, out, _ = cli(capsys, "verify", "vset", "--quick")  # sizes only: no read of the shards
    found = problems(out)
    assert code == 1 and found[urls[0]] == "truncated" and found[urls[2]] == "missing"
