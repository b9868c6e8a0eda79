"""Shards on S3 (a real moto server over HTTP, through s3fs): manifests and loading match local disk."""

import s3fs

from open_vlm.config.schema import SourceConfig
from open_vlm.data.build import source_manifest
from open_vlm.data.loader import Source
from open_vlm.data.manifest import build_manifest, read_manifest, write_manifest
from tests.data.shardgen import make_loader, write_shards


def upload(local_urls, bucket, endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    remote = []
    for url in local_urls:
        name = url.rsplit("/", 1)[1]
        fs.put_file(url, f"{bucket}/shards/{name}")
        remote.append(f"s3://{bucket}/shards/{name}")
    return remote


def test_s3_manifest_and_loader_match_local(tmp_path, s3_endpoint, s3_bucket):
    local = write_shards(tmp_path, "s", 3, 7)
    remote = upload(local, s3_bucket, s3_endpoint)
    manifest = write_manifest(remote, f"s3://{s3_bucket}/shards/manifest.json")
    local_manifest = read_manifest(str(tmp_path / "manifest.json"))
    assert [s.num_samples for s in manifest.shards] == [7, 7, 7]
    assert [s.checksum for s in manifest.shards] == [s.checksum for s in local_manifest.shards]
    assert all(s.etag for s in manifest.shards)
    again = read_manifest(f"s3://{s3_bucket}/shards/manifest.json")
    assert [s.url for s in again.shards] == remote

    def batches(m, workers):
        loader = make_loader([Source("s", "image_text", 1.0, m)], num_workers=workers, num_streams=4)
        it = iter(loader)
        return [next(it)["keys"] for _ in range(12)], loader

    from_s3, loader = batches(again, workers=2)
    from_disk, _ = batches(local_manifest, workers=0)
    assert from_s3 == from_disk
    from open_vlm.data.consumed import consumed_files

    files = consumed_files(loader.orders, loader.sources, loader.state_dict()["positions"])
    assert files and all(c["url"].startswith("s3://") for c in files)


def test_manifest_built_and_cached_on_first_use(tmp_path, s3_endpoint, s3_bucket, caplog):
    local = write_shards(tmp_path, "c", 2, 5)
    remote = upload(local, s3_bucket, s3_endpoint)
    cfg = SourceConfig(name="c", urls=[f"s3://{s3_bucket}/shards/c-{{00000..00001}}.tar"])
    with caplog.at_level("INFO"):
        manifest = source_manifest(cfg)
    assert [s.url for s in manifest.shards] == remote
    assert "counting samples" in caplog.text
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    assert fs.exists(f"{s3_bucket}/shards/manifest.json")
    assert fs.exists(f"{s3_bucket}/shards/manifest.index.npz")  # what every later process reads instead
    caplog.clear()
    with caplog.at_level("INFO"):
        again = source_manifest(cfg)
    assert list(again.urls) == remote and again.counts.tolist() == manifest.counts.tolist()
    assert "counting samples" not in caplog.text and "indexing" not in caplog.text


def test_build_manifest_parallel_keeps_order(tmp_path):
    urls = write_shards(tmp_path, "p", 6, [3, 1, 4, 1, 5, 9])
    assert [s.num_samples for s in build_manifest(urls, workers=4).shards] == [3, 1, 4, 1, 5, 9]
