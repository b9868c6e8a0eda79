"""Bad data keeps its place in the order: skipped, counted per kind and logged (or fatal in strict mode)."""

import gzip
import io
import tarfile
from collections import Counter

import pytest

from open_vlm.data.loader import Source
from open_vlm.data.manifest import ShardManifest, build_manifest, read_manifest
from tests.data.shardgen import jpeg, make_loader, write_shards


def rewrite_member(path, member_name, data: bytes | None):
    """Replace (or drop, with None) one member of a tar shard."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for m, content in members:
            if m.name == member_name:
                if data is None:
                    continue
                content = data
            m.size = len(content)
            tar.addfile(m, io.BytesIO(content))


@pytest.fixture
def damaged(tmp_path):
    urls = write_shards(tmp_path, "d", 4, 10)
    manifest = read_manifest(str(tmp_path / "manifest.json"))  # counted before the damage
    size = (tmp_path / "d-00001.tar").stat().st_size
    with open(urls[1], "r+b") as f:
        f.truncate(size // 2)  # shard 1: truncated mid-way
    rewrite_member(urls[2], "d_002_0003.jpg", b"not a jpeg at all")  # shard 2: one bad image
    rewrite_member(urls[2], "d_002_0005.txt", None)  # shard 2: one sample without caption
    (tmp_path / "d-00003.tar").unlink()  # shard 3: missing
    return [Source("d", "image_text", 1.0, manifest)]


def one_epoch(loader, steps=12):
    keys = []
    it = iter(loader)
    for _ in range(steps * loader.accum_steps):
        batch = next(it)
        keys += [k for k, e in zip(batch["keys"], batch["epochs"]) if e == 0]
    return keys


def test_bad_data_skipped_counted_logged(damaged, caplog):
    loader = make_loader(damaged, num_streams=4, num_workers=2)
    with caplog.at_level("WARNING"):
        keys = one_epoch(loader)
    counts = Counter(keys)
    assert max(counts.values()) == 1
    shard0 = {f"d_000_{i:04d}" for i in range(10)}
    shard2 = {f"d_002_{i:04d}" for i in range(10)} - {"d_002_0003", "d_002_0005"}
    assert shard0 | shard2 <= set(keys)  # every good sample of the intact shards
    assert not {k for k in keys if k.startswith("d_003")}  # the missing shard gave nothing
    got1 = {k for k in keys if k.startswith("d_001")}
    assert 0 < len(got1) < 10  # the truncated shard gave what it had
    bad = loader.state_dict()["bad_samples"]
    assert {"bad_image", "missing_field", "missing_shard", "truncated_shard"} <= set(bad)
    text = caplog.text
    assert "d_002_0003" in text and "d-00003.tar" in text and "d-00001.tar" in text


def test_counts_are_exact_and_nothing_shifts(tmp_path):
    urls = write_shards(tmp_path, "e", 1, 10)
    manifest = read_manifest(str(tmp_path / "manifest.json"))
    clean = [Source("e", "image_text", 1.0, manifest)]
    reference = next(iter(make_loader(clean, global_batch=10, micro_batch=10, num_streams=1)))["keys"]
    rewrite_member(urls[0], "e_000_0004.jpg", b"garbage")
    loader = make_loader(clean, global_batch=10, micro_batch=10, num_streams=1)
    batch = next(iter(loader))
    assert batch["keys"] == [k for k in reference if k != "e_000_0004"]  # the same order, one sample less
    assert batch["rows"] == 10  # the bad sample's row holds a copy marked invalid: shapes never change
    assert [h["key"] for h in batch["holes"]] == ["e_000_0004"]
    assert loader.state_dict()["bad_samples"] == {"bad_image": 1}
    assert loader.state_dict()["positions"] == [10]  # its position is used up like any other


def test_strict_mode_fails_fast(damaged):
    loader = make_loader(damaged, num_streams=4, strict=True)
    with pytest.raises(RuntimeError, match="bad data"):
        one_epoch(loader)


def test_manifest_refuses_a_truncated_shard(tmp_path):
    urls = write_shards(tmp_path, "t", 1, 5)
    with open(urls[0], "r+b") as f:
        f.truncate(700)
    with pytest.raises(ValueError, match="truncated"):
        build_manifest(urls)


def test_gzipped_shards_and_members(tmp_path):
    path = tmp_path / "g-00000.tar.gz"
    with gzip.open(path, "wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for i in range(6):
            for name, data in ((f"g_{i}.jpg", jpeg(i)), (f"g_{i}.txt.gz", gzip.compress(f"gz caption {i}".encode()))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    manifest = build_manifest([str(path)])
    assert manifest.shards[0].num_samples == 6
    loader = make_loader([Source("g", "image_text", 1.0, manifest)], global_batch=6, micro_batch=6, num_streams=2)
    batch = next(iter(loader))
    assert sorted(batch["keys"]) == [f"g_{i}" for i in range(6)]


def test_json_caption_img2dataset_style(tmp_path):
    import json

    import webdataset as wds

    path = tmp_path / "j-00000.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(4):
            sink.write(
                {
                    "__key__": f"{i:09d}",
                    "jpg": jpeg(i),
                    "json": json.dumps({"caption": f"json caption {i}", "url": "x"}),
                }
            )
    loader = make_loader(
        [Source("j", "image_text", 1.0, ShardManifest(build_manifest([str(path)]).shards))],
        global_batch=4,
        micro_batch=4,
        num_streams=1,
    )
    batch = next(iter(loader))
    assert sorted(batch["keys"]) == [f"{i:09d}" for i in range(4)]


def test_a_hung_worker_is_reported_with_its_shard(tmp_path):
    """A read that never returns (here a FIFO nobody writes; in life a frozen endpoint) stops the run, named."""
    import os
    import time

    from open_vlm.data.watchdog import WorkerHung

    urls = write_shards(tmp_path, "h", 2, 4)
    manifest = read_manifest(str(tmp_path / "manifest.json"))
    os.unlink(urls[1])
    os.mkfifo(urls[1])  # opening it blocks until a writer comes: never
    loader = make_loader([Source("h", "image_text", 1.0, manifest)], num_streams=2, num_workers=1, worker_timeout_s=3)
    started = time.monotonic()
    with pytest.raises(WorkerHung, match="h-00001.tar") as caught:
        it = iter(loader)
        for _ in range(8):
            next(it)
    assert "worker_timeout_s" in str(caught.value)
    assert time.monotonic() - started < 60


def test_workers_blocked_in_a_read_die_with_their_trainer(tmp_path):
    """Workers live in their own process group (torchrun's SIGTERM is for the trainer): when the trainer is
    killed outright, one blocked in a read must not stay behind (here: forever in open() of a FIFO)."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    urls = write_shards(tmp_path, "k", 2, 4)
    os.unlink(urls[1])
    os.mkfifo(urls[1])
    script = f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from open_vlm.data.loader import Source
from open_vlm.data.manifest import read_manifest
from tests.data.shardgen import make_loader
source = Source("k", "image_text", 1.0, read_manifest({str(tmp_path / "manifest.json")!r}))
it = iter(make_loader([source], num_streams=2, num_workers=1))
next(it)
"""
    trainer = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and not workers:
        workers = [p for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == trainer.pid]
        time.sleep(0.2)
    assert workers, "the loader worker never started"
    time.sleep(2)  # it is now blocked opening the FIFO
    trainer.kill()
    trainer.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{w}") and _alive(int(w)) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if os.path.exists(f"/proc/{w}") and _alive(int(w))]
    for w in left:
        os.kill(int(w), 9)
    assert not left, "a loader worker outlived its trainer"


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
