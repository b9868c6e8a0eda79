"""Writing `region_features` shards: deterministic tar bytes, committed atomically (temp name, then rename or a
single upload), so a shard that exists is complete and a re-run writes byte-identical files. A sample key that
would be a path outside its shard once unpacked (absolute, `..`, a drive, a backslash) is never written."""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
from pathlib import Path

import fsspec
import numpy as np

from open_vlm.extract.registry import Regions
from open_vlm.storage import is_remote


class UnsafeKey(ValueError):
    """A sample key that would name a file outside the shard's folder if the tar were unpacked."""


def safe_key(key: str) -> bool:
    """Whether a sample key stays a relative path below its shard: no absolute path, `..` part, drive or backslash."""
    return (
        bool(key)
        and not key.startswith("/")
        and ".." not in key.split("/")
        and "\\" not in key
        and "\0" not in key
        and not re.match(r"^[A-Za-z]:", key)
    )


def image_id(key: str, strip_leading_zeros: bool = False) -> str:
    """The image id of a sample key: its last path part, a string as it is (`"000000397133"`); with
    `strip_leading_zeros`, the trailing number without leading zeros (`"COCO_val2014_000000397133"` → `"397133"`)."""
    base = key.rsplit("/", 1)[-1]
    if strip_leading_zeros:
        match = re.search(r"(\d+)$", base)
        if match:
            return str(int(match.group(1)))
    return base


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sample_members(
    regions: Regions,
    *,
    image_id: str,
    size: tuple[int, int],
    caption: str | None,
    source_json: dict | None,
    image: tuple[str, bytes] | None = None,
) -> dict[str, bytes]:
    """The members of one output sample: features/boxes (+ classes/scores) npy, txt, json (+ the image)."""
    members = {"features.npy": npy_bytes(regions.features.astype(np.float32))}
    members["boxes.npy"] = npy_bytes(regions.boxes.astype(np.float32))
    if regions.classes is not None:
        members["classes.npy"] = npy_bytes(regions.classes.astype(np.int64))
    if regions.scores is not None:
        members["scores.npy"] = npy_bytes(regions.scores.astype(np.float32))
    if caption is not None:
        members["txt"] = caption.encode("utf-8")
    meta = dict(source_json or {})  # the source's fields (labels, questions) travel with the features
    meta.update(
        image_id=image_id, width=size[0], height=size[1], num_regions=len(regions.boxes), extraction=regions.info
    )
    members["json"] = json.dumps(meta, sort_keys=True).encode("utf-8")
    if image is not None:
        members[image[0]] = image[1]
    return members


def output_url(out: str, input_url: str) -> str:
    """Where the output shard of `input_url` goes: `out/<same file name>`."""
    return posixpath.join(out.rstrip("/"), posixpath.basename(input_url))


def shard_exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


class ShardWriter:
    """`with ShardWriter(url) as w: w.write(key, members)`: tar members with fixed metadata (mtime 0, uid 0),
    written under a temporary name and moved to `url` only when the block ends without an error."""

    def __init__(self, url: str):
        self.url = url
        if is_remote(url):
            fd, name = tempfile.mkstemp(suffix=".tar")
            os.close(fd)
            self.temp = Path(name)
        else:
            final = Path(url.removeprefix("file://"))
            final.parent.mkdir(parents=True, exist_ok=True)
            self.temp = final.parent / f".{final.name}.partial"  # leftovers of a killed run are overwritten
        self.tar: tarfile.TarFile | None = None

    def __enter__(self) -> ShardWriter:
        self.tar = tarfile.open(self.temp, "w", format=tarfile.PAX_FORMAT)
        return self

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if not safe_key(key):
            raise UnsafeKey(f"{self.url}: sample key {key!r} would be a path outside the shard; not written")
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))

    def __exit__(self, exc_type, exc, tb) -> None:
        self.tar.close()
        if exc_type is not None:
            self.temp.unlink(missing_ok=True)
            return
        if is_remote(self.url):  # one PUT: the object appears whole or not at all
            fs, path = fsspec.core.url_to_fs(self.url)
            fs.put_file(str(self.temp), path)
            self.temp.unlink()
        else:
            os.replace(self.temp, self.url.removeprefix("file://"))
