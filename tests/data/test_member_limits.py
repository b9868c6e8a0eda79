"""Tar members the loader must not trust: a 2 GB "caption" is skipped and counted (`oversized_member`) without being
read into memory; a cut tar reads to the same samples whether its bytes are read or only its names counted; a
storage error mid-read is retried from the same byte, never turned into a short shard."""

import gzip
import io
import resource
import tarfile

import pytest

from open_vlm.data.loader import Source
from open_vlm.data.manifest import build_manifest, read_manifest
from open_vlm.data.shards import ShardUnreadable, _RetryingReader, iter_tar_samples
from tests.data.shardgen import jpeg, make_loader, write_shards

BIG = 2 * 1024**3  # a 2 GB member: a sparse file on disk, never in memory


def member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + b"\0" * (-len(data) % 512)


def write_with_huge_caption(path) -> None:
    """Three samples; the middle one's caption claims 2 GB (zeros, left as a hole in the file)."""
    with open(path, "wb") as f:
        f.write(member("k0.jpg", jpeg(0)) + member("k0.txt", b"small caption"))
        f.write(member("k1.jpg", jpeg(1)))
        info = tarfile.TarInfo("k1.txt")
        info.size = BIG
        f.write(info.tobuf(format=tarfile.PAX_FORMAT))
        f.seek(BIG, io.SEEK_CUR)  # sparse: the file system stores no data there
        f.write(member("k2.jpg", jpeg(2)) + member("k2.txt", b"another caption") + b"\0" * 1024)


@pytest.mark.slow
def test_a_2gb_caption_is_skipped_without_reading_it(tmp_path):
    """Shown to fail on a broken build: without the size check, reading it took 2 GB of memory (MemoryError or the
    RSS check)."""
    path = tmp_path / "huge-00000.tar"
    write_with_huge_caption(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(path, "rb") as f:
        samples = list(iter_tar_samples(f, str(path)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert [s["__key__"] for s in samples] == ["k0", "k1", "k2"]
    assert samples[1]["__oversized__"] == [f"txt ({BIG} bytes)"] and "txt" not in samples[1]
    assert samples[2]["txt"] == b"another caption"
    assert grown_mb < 200, f"reading the shard grew the process by {grown_mb:.0f} MB"


def test_an_oversized_member_is_a_counted_hole_in_its_place(tmp_path):
    """`data.max_member_bytes`: the sample keeps its position (counted in the manifest), its row is invalid."""
    urls = write_shards(tmp_path, "o", 1, 6)
    with tarfile.open(urls[0]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(urls[0], "w") as tar:
        for m, data in members:
            data = b"x" * 5000 if m.name == "o_000_0002.txt" else data
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    manifest = build_manifest(urls)
    assert manifest.shards[0].num_samples == 6  # counted: the sample is there, it is only too big to read
    loader = make_loader([Source("o", "image_text", 1.0, manifest)], global_batch=6, micro_batch=6, num_streams=1)
    loader.settings.max_member_bytes = 1000  # smaller than the 5000-byte caption, larger than the images
    batch = next(iter(loader))
    assert [h["key"] for h in batch["holes"]] == ["o_000_0002"] and batch["rows"] == 6
    assert loader.state_dict()["bad_samples"] == {"oversized_member": 1}


@pytest.mark.parametrize("compress", [False, True])
def test_counting_a_cut_tar_gives_the_samples_reading_gives(tmp_path, compress):
    """What the manifest counts of a cut shard is what the loader then reads from it, at every cut."""
    urls = write_shards(tmp_path, "c", 1, 5)
    data = open(urls[0], "rb").read()
    data = gzip.compress(data) if compress else data
    for cut in range(0, len(data), max(1, len(data) // 97)):
        piece = data[:cut]
        read = [s["__key__"] for s in iter_tar_samples(io.BytesIO(piece), "x", on_error=lambda *a: None)]
        counted = [
            s["__key__"] for s in iter_tar_samples(io.BytesIO(piece), "x", on_error=lambda *a: None, read_data=False)
        ]
        assert read == counted, cut


def test_manifest_of_a_cut_shard_counts_what_reads_and_flags_it(tmp_path):
    urls = write_shards(tmp_path, "f", 2, 8)
    size = (tmp_path / "f-00001.tar").stat().st_size
    with open(urls[1], "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match="f-00001.tar: corrupt or truncated tar"):
        build_manifest(urls)  # strict by default: the manifest tools refuse it
    manifest = build_manifest(urls, strict=False)
    shard = manifest.shards[1]
    assert 0 < shard.num_samples < 8 and "truncated" in shard.damaged and manifest.shards[0].damaged is None
    (tmp_path / "manifest.json").write_text(manifest.to_json(relative_to=str(tmp_path)))
    again = read_manifest(str(tmp_path / "manifest.json"))
    assert [s.damaged for s in again.shards] == [None, shard.damaged]


class Flaky(io.BytesIO):
    """A remote file whose reads fail `fails` times (a frozen endpoint), then work."""

    fails = 0

    def read(self, n=-1):
        if Flaky.fails:
            Flaky.fails -= 1
            raise TimeoutError("read timed out")
        return super().read(n)


def test_a_failing_read_is_retried_from_the_same_byte(monkeypatch):
    """Shown to fail on a broken build: re-opening at byte 0 instead of the position read the start twice."""
    import open_vlm.data.shards as shards

    data = bytes(range(256)) * 40
    monkeypatch.setattr(shards, "RETRY_BASE_SECONDS", 0.0)
    monkeypatch.setattr(shards.fsspec, "open", lambda url, mode: type("O", (), {"open": lambda self: Flaky(data)})())
    reader = _RetryingReader("s3://b/x.tar", "rb", Flaky(data))
    first = reader.read(1000)
    Flaky.fails = 2
    assert first + reader.read(1000) + reader.read() == data
    Flaky.fails = 99
    with pytest.raises(ShardUnreadable, match="s3://b/x.tar failed 6 times"):
        reader.read(10)
    Flaky.fails = 0
