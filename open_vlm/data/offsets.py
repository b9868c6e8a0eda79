"""Where each sample starts in its tar shard: one seek instead of reading the shard's prefix.

A stream starts each epoch's range, and every resume, in the middle of a shard. Without an index, reaching
sample k means reading the k samples' tar headers; on S3 that downloads the prefix (s3fs fetches 50 MiB ahead).
When our tools build a manifest they record each sample's byte offset (the `__offset__` of
`shards.iter_tar_samples`) in `<manifest>.offsets.npy`: int64, element 0 a fingerprint of the manifest JSON it
was written with, then every sample's offset, shard after shard in manifest order. The manifest index records
each shard's first element, so a reader fetches one shard's offsets (8 bytes a sample) with one small read.
"""

from __future__ import annotations

import hashlib
import io
import logging

import fsspec
import numpy as np

from open_vlm.storage import is_remote, write_atomic

log = logging.getLogger(__name__)

HEADER_PROBE = 256  # enough to parse any .npy header numpy writes for a 1-D int64 array


def offsets_url(manifest_url: str) -> str:
    stem = manifest_url[: -len(".json")] if manifest_url.endswith(".json") else manifest_url
    return f"{stem}.offsets.npy"


def fingerprint(identity: str) -> int:
    """A manifest JSON's identity (size and mtime/ETag) as the int64 the offsets file starts with."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "little", signed=True)


def write_offsets(manifest_url: str, identity: str, offsets: np.ndarray) -> None:
    """Write every sample's offset (manifest order) for the manifest JSON with `identity`."""
    buf = io.BytesIO()
    np.save(buf, np.concatenate([[fingerprint(identity)], np.asarray(offsets, dtype=np.int64)]))
    write_atomic(offsets_url(manifest_url), buf.getvalue())


def _data_start(header: bytes) -> int:
    """Where the array data of an .npy file starts (after its magic, version and header)."""
    stream = io.BytesIO(header)
    version = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    read(stream)
    return stream.tell()


def offsets_valid(manifest_url: str, identity: str, samples: int) -> bool:
    """Whether the offsets file beside the manifest was written for this JSON and holds `samples` offsets."""
    fs, path = fsspec.core.url_to_fs(offsets_url(manifest_url))
    try:
        header = fs.cat_file(path, start=0, end=HEADER_PROBE)
        size = fs.info(path)["size"]
    except (FileNotFoundError, OSError):
        return False
    try:
        start = _data_start(header)
    except ValueError:
        return False
    first = np.frombuffer(header[start : start + 8], dtype=np.int64)
    return size - start == 8 * (samples + 1) and len(first) == 1 and int(first[0]) == fingerprint(identity)


class SampleOffsets:
    """Byte offsets of the samples of a manifest's shards, read shard by shard (local: memory-mapped)."""

    def __init__(self, url: str, starts: np.ndarray):
        self.url, self.starts = url, starts  # starts[i]: shard i's first element (the fingerprint is element 0)
        self._array: np.ndarray | None = None
        self._data_start: int | None = None
        self._cache: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict:  # workers open their own view
        return {**self.__dict__, "_array": None, "_cache": {}}

    def shard(self, shard: int, count: int) -> np.ndarray:
        """The byte offset of each of `count` samples of shard `shard`."""
        found = self._cache.get(shard)
        if found is not None:
            return found
        first = 1 + int(self.starts[shard])
        if not is_remote(self.url):
            if self._array is None:
                self._array = np.load(self.url, mmap_mode="r")
            found = np.array(self._array[first : first + count])
        else:
            fs, path = fsspec.core.url_to_fs(self.url)
            if self._data_start is None:
                self._data_start = _data_start(fs.cat_file(path, start=0, end=HEADER_PROBE))
            data = fs.cat_file(path, start=self._data_start + 8 * first, end=self._data_start + 8 * (first + count))
            found = np.frombuffer(data, dtype=np.int64).copy()
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[shard] = found
        return found
