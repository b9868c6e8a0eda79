"""Tar reading: seeking to a sample by its headers gives what reading in order gives."""

import io
import tarfile

import pytest

from open_vlm.data.shards import iter_tar_samples, seek_to_sample


def make_tar(keys, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for key in keys:
            for suffix, data in (("txt", key.encode()), ("cls", b"7")):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "keys",
    [
        [f"s{i:03d}" for i in range(7)],
        [("x" * 120) + f"/{i}" if i % 2 else f"short{i}" for i in range(7)],  # pax long names
        ["d/" + "é" * 3 + str(i) for i in range(5)],  # non-ASCII: pax path records
    ],
)
def test_seek_matches_reading_in_order(keys):
    data = make_tar(keys)
    in_order = list(iter_tar_samples(io.BytesIO(data), "t.tar"))
    assert [s["__key__"] for s in in_order] == keys
    for index in range(len(keys)):
        stream = io.BytesIO(data)
        assert seek_to_sample(stream, index)
        first = next(iter_tar_samples(stream, "t.tar"))
        assert first == in_order[index]


def test_seek_past_the_end_says_no():
    assert not seek_to_sample(io.BytesIO(make_tar(["a", "b"])), 5)
