"""The manifest index: training processes read counts, URLs and the version without parsing the JSON."""

import os

import pytest

from open_vlm.config.schema import SourceConfig
from open_vlm.data import build, manifest_index
from open_vlm.data.manifest import ShardManifest, read_manifest
from open_vlm.data.manifest_index import index_url, training_manifest
from open_vlm.data.version import manifest_version
from tests.data.shardgen import write_text_shards


@pytest.fixture
def shards(tmp_path):
    urls = write_text_shards(tmp_path, "x", [3, 0, 5, 2])
    return tmp_path, urls


def test_index_is_written_with_the_manifest_and_read_instead_of_the_json(shards, monkeypatch):
    folder, urls = shards
    path = str(folder / "manifest.json")
    assert os.path.exists(index_url(path))
    full = read_manifest(path)
    monkeypatch.setattr(manifest_index, "read_manifest", lambda _: pytest.fail("the JSON was parsed"))
    manifest, _ = training_manifest(path)
    assert list(manifest.urls) == urls and manifest.counts.tolist() == [3, 0, 5, 2]
    assert manifest_version(manifest) == manifest_version(full)  # the cached version is the JSON's


def test_a_changed_json_rebuilds_the_index(shards):
    folder, urls = shards
    path = str(folder / "manifest.json")
    training_manifest(path)
    rows = read_manifest(path).shards
    changed = ShardManifest([rows[0], rows[2]])
    (folder / "manifest.json").write_text(changed.to_json(relative_to=str(folder)))  # by hand, no index
    manifest, _ = training_manifest(path)
    assert manifest.counts.tolist() == [3, 5]
    assert manifest_version(manifest) == manifest_version(changed)


def test_an_unwritable_index_location_falls_back_to_the_cache(shards, monkeypatch, tmp_path_factory):
    folder, _ = shards
    path = str(folder / "manifest.json")
    os.unlink(index_url(path))
    os.mkdir(index_url(path))  # the index cannot be written there (root ignores permission bits, not this)
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("OPEN_VLM_CACHE", str(cache))
    training_manifest(path)
    assert len(list(cache.rglob("*.index.npz"))) == 1
    monkeypatch.setattr(manifest_index, "read_manifest", lambda _: pytest.fail("the JSON was parsed"))
    assert training_manifest(path)[0].counts.tolist() == [3, 0, 5, 2]


def test_sources_built_from_the_same_patterns_skip_url_expansion(shards, monkeypatch):
    folder, urls = shards
    cfg = SourceConfig(name="x", urls=[str(folder / "x-{00000..00003}.tar")])
    first = build.source_manifest(cfg)  # expands once and remembers the patterns in the index
    assert list(first.urls) == urls
    monkeypatch.setattr(build, "expand_urls", lambda _: pytest.fail("expanded the URL patterns again"))
    again = build.source_manifest(cfg)
    assert list(again.urls) == urls and manifest_version(again) == manifest_version(first)


def test_a_subset_of_the_manifest_has_the_subsets_version(shards):
    folder, urls = shards
    cfg = SourceConfig(name="x", urls=[urls[2], urls[0]])
    manifest = build.source_manifest(cfg)
    assert list(manifest.urls) == [urls[2], urls[0]] and manifest.counts.tolist() == [5, 3]
    by_url = read_manifest(str(folder / "manifest.json")).by_url()
    assert manifest_version(manifest) == manifest_version(ShardManifest([by_url[urls[2]], by_url[urls[0]]]))
