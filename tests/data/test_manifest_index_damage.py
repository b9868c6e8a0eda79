"""Regression test (a review found this, now fixed): a damaged `manifest.index.npz` crashes every training process instead of being ignored and rebuilt.

Claim 6: the index is a cache; `_load` means to ignore an unreadable one ("ignoring an unreadable manifest
index") but only catches OSError/ValueError/KeyError. numpy raises EOFError for an empty file and
zipfile.BadZipFile for a truncated one (a partial copy, rsync cut short, a full disk on the shared FS): then
`training_manifest` (and every `build_loader`) dies with "File is not a zip file" instead of re-reading the JSON.
"""

import pytest

from open_vlm.data.manifest_index import index_url, training_manifest
from tests.data.shardgen import write_text_shards


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_index_is_ignored_and_the_json_read(tmp_path, damage):
    write_text_shards(tmp_path, "x", [3, 5])
    path = str(tmp_path / "manifest.json")
    index = index_url(path)
    with open(index, "rb") as f:
        data = f.read()
    with open(index, "wb") as f:
        f.write(b"" if damage == "empty" else data[: len(data) // 2])
    manifest, _ = training_manifest(path)
    assert manifest.counts.tolist() == [3, 5]
