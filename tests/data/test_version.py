"""Dataset versions: stable for the same shards, new for changed ones; a resume on changed data is refused."""

import json
import shutil

import pytest
import webdataset as wds

from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest, write_manifest
from open_vlm.data.version import DataVersionError, manifest_version
from tests.data.shardgen import jpeg, make_loader, write_shards


def rewrite_shard(url: str, count: int, caption: str = "changed") -> None:
    """The same keys and sample count, other captions: a silent change of contents."""
    with wds.TarWriter(url) as sink:
        for i in range(count):
            sink.write({"__key__": f"k_{i:04d}", "jpg": jpeg(i), "txt": f"{caption} {i}"})


def version_of(folder) -> str:
    return manifest_version(read_manifest(str(folder / "manifest.json")))


def rebuild(folder, urls) -> None:
    write_manifest(urls, str(folder / "manifest.json"))


def test_version_stays_when_nothing_changes_and_moves_when_a_shard_does(tmp_path):
    urls = write_shards(tmp_path / "a", "a", 3, 6)
    first = version_of(tmp_path / "a")
    rebuild(tmp_path / "a", urls)
    assert version_of(tmp_path / "a") == first  # recounted, same bytes
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    rebuild(tmp_path / "copy", [u.replace("/a/", "/copy/") for u in urls])
    assert version_of(tmp_path / "copy") == first  # same shards elsewhere: same version
    rewrite_shard(urls[1], 6)
    rebuild(tmp_path / "a", urls)
    changed = version_of(tmp_path / "a")
    assert changed != first and len(changed) == 12
    rewrite_shard(urls[1], 6, caption="again")
    rebuild(tmp_path / "a", urls)
    assert version_of(tmp_path / "a") not in (first, changed)


def loader_on(folder, **settings):
    source = Source("coco", "image_text", 1.0, read_manifest(str(folder / "manifest.json")))
    return make_loader([source], num_streams=4, **settings)


def take_keys(loader, n):
    it = iter(loader)
    return [next(it)["keys"] for _ in range(n)]


def test_resume_refused_on_a_changed_version_unless_allowed(tmp_path):
    urls = write_shards(tmp_path / "d", "d", 2, 12)
    loader = loader_on(tmp_path / "d")
    straight = take_keys(loader_on(tmp_path / "d"), 8)
    assert take_keys(loader, 4) == straight[:4]
    state = json.loads(json.dumps(loader.state_dict()))  # as checkpoints store it (data.json)
    assert state["sources"] == ["coco"] and state["versions"] == [version_of(tmp_path / "d")]

    resumed = loader_on(tmp_path / "d")
    resumed.load_state_dict(state)  # same data: resumes exactly
    assert take_keys(resumed, 4) == straight[4:]

    rewrite_shard(urls[0], 12)
    rebuild(tmp_path / "d", urls)
    new_version = version_of(tmp_path / "d")
    with pytest.raises(DataVersionError) as err:
        loader_on(tmp_path / "d").load_state_dict(state)
    message = str(err.value)
    assert f"source 'coco': version {state['versions'][0]} in the checkpoint, {new_version} now" in message
    assert "checkpoint.allow_data_change" in message

    allowed = loader_on(tmp_path / "d")
    allowed.load_state_dict(state, allow_data_change=True)
    assert allowed.state.step == 2  # the position is taken over as saved (4 micro-batches of 4, global batch 8)
    assert len(take_keys(allowed, 1)[0]) == 4
