"""Regression test (a review found this, now fixed): a manifest of ONE shard named without a directory ("train.tar") or at "/" loses characters of its URL.

manifest.py `UrlColumn.from_list`: for a single URL the base is `dirname(url) + "/"`, which is "/" for "train.tar"
(-> "/rain.tar") and "//" for "/abs.tar" (-> "//bs.tar"). Each rebuild drops one more character. Through
`build.source_manifest` (a one-shard fine-tuning set, run from its folder with `urls: [train.tar]`) this raises
KeyError 'train.tar' and leaves a manifest.json naming "//ain.tar" beside the shard.
"""

import os

import pytest

from open_vlm.config.schema import SourceConfig
from open_vlm.data.build import source_manifest
from open_vlm.data.manifest import UrlColumn
from tests.data.shardgen import write_text_shards


@pytest.mark.parametrize("urls", [["train.tar"], ["/abs.tar"], ["d/x.tar"], ["a.tar", "b.tar"]])
def test_url_column_keeps_every_url(urls):
    assert list(UrlColumn.from_list(urls)) == urls


def test_a_one_shard_source_named_relative_to_the_working_directory(tmp_path, monkeypatch):
    write_text_shards(tmp_path, "x", [5])
    os.rename(tmp_path / "x-00000.tar", tmp_path / "train.tar")
    os.unlink(tmp_path / "manifest.json")
    os.unlink(tmp_path / "manifest.index.npz")
    monkeypatch.chdir(tmp_path)
    manifest = source_manifest(SourceConfig(name="x", urls=["train.tar"], modality="text"))
    assert list(manifest.urls) == ["train.tar"] and manifest.counts.tolist() == [5]
