"""Shard URLs to raw samples: brace expansion, fsspec opening (local, s3://, any URL), tar → grouped samples.

Storage that fails for a while (a frozen S3 endpoint) is retried, opening and mid-read alike (a remote read
re-opens at the same byte); storage that keeps failing stops the run with `ShardUnreadable` instead of turning
the shard's samples into holes. Only a shard that is not there (FileNotFoundError) or whose bytes end early is a
hole (see stream.py): nothing is lost to an outage.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

import braceexpand
import fsspec

from open_vlm.errors import DataError
from open_vlm.storage import is_remote

log = logging.getLogger(__name__)

T = TypeVar("T")

# Storage errors are retried with backoff (0.5, 1, 2, 4, 8 s: about 15 s of patience above the storage library's own
# retries) before the run stops.
RETRY_ATTEMPTS = 6
RETRY_BASE_SECONDS = 0.5
# Tar members above this size are not read into memory (a 2 GB "caption"): `data.max_member_bytes`.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


def expand_urls(patterns: str | list[str]) -> list[str]:
    """Expand brace patterns (`x-{000..009}.tar`) into a flat list of URLs, keeping order."""
    if isinstance(patterns, str):
        patterns = [patterns]
    urls: list[str] = []
    for pattern in patterns:
        urls.extend(braceexpand.braceexpand(pattern))
    return urls


class ShardUnreadable(DataError):
    """A shard whose storage kept failing (not a missing or short shard): the run stops rather than skip it."""

    def __init__(self, message: str):
        # A DataLoader worker's exception comes back as `type("Caught ... Original Traceback ...")`: keep the message.
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


# Where the storage libraries' own errors come from (s3fs lets some through untranslated).
STORAGE_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "fsspec", "s3fs", "gcsfs", "adlfs")


def _transient(err: Exception) -> bool:
    """A storage error worth retrying: not a missing file, not a bad URL or argument."""
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in STORAGE_MODULES


def _retry(url: str, what: str, fn: Callable[[], T], before_retry: Callable[[], None] | None = None) -> T:
    """`fn()`, retried with backoff on storage errors; a missing file is not retried."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            if attempt and before_retry is not None:
                before_retry()
            return fn()
        except Exception as err:
            if not _transient(err):
                raise
            reason = f"{type(err).__name__}: {err}".splitlines()[0]
            if attempt == RETRY_ATTEMPTS - 1:
                raise ShardUnreadable(
                    f"{what} {url} failed {RETRY_ATTEMPTS} times ({reason}): is the storage reachable? The run stops "
                    "here rather than skip the shard's samples; resume from the last checkpoint once it is"
                ) from err
            delay = RETRY_BASE_SECONDS * 2**attempt
            log.warning("%s %s failed (%s); retrying in %.1fs", what, url, reason, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _open_once(url: str, mode: str, block_size: int | None):
    if block_size and "://" in url:
        fs, path = fsspec.core.url_to_fs(url)
        return fs.open(path, mode, block_size=block_size)
    return fsspec.open(url, mode).open()


class _RetryingReader:
    """A remote file that survives a failing read: it re-opens the URL at the same byte and reads again."""

    def __init__(self, url: str, mode: str, stream, block_size: int | None = None):
        self.url, self.mode, self.stream, self.pos, self.block_size = url, mode, stream, 0, block_size

    def _reopen(self) -> None:
        try:
            self.stream.close()
        except Exception:  # the broken connection may not close cleanly either
            pass
        self.stream = _open_once(self.url, self.mode, self.block_size)
        self.stream.seek(self.pos)

    def read(self, n: int = -1) -> bytes:
        data = _retry(self.url, f"reading byte {self.pos} of", lambda: self.stream.read(n), self._reopen)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = self.stream.seek(offset, whence)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return self.stream.seekable()

    def close(self) -> None:
        self.stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_url(url: str, mode: str = "rb", block_size: int | None = None) -> IO[bytes]:
    """Open a local path or any fsspec URL for streaming; storage errors are retried (opening and, for a remote
    file, each read), a missing file raises FileNotFoundError, storage that keeps failing `ShardUnreadable`.

    `block_size`: bytes a remote file fetches per request (s3fs reads 50 MiB ahead by default: a reader that
    needs less of the file, e.g. one stream's share of a shard, should say so)."""
    stream = _retry(url, "opening", lambda: _open_once(url, mode, block_size))
    return _RetryingReader(url, mode, stream, block_size) if is_remote(url) and "r" in mode else stream


def split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; suffix = the rest."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


BLOCK = 512
_FILE_TYPES = (b"0", b"\0", b"7")  # regular files, as tarfile's isfile()


def header_ok(header: bytes) -> bool:
    try:
        stored = int(header[148:156].rstrip(b" \0") or b"0", 8)
    except ValueError:
        return False
    unsigned = sum(header) - sum(header[148:156]) + 8 * 32
    return stored == unsigned


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header (records are "<len> key=value\n")."""
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            return None
        length = int(data[pos:space])
        if length <= space - pos:  # a record cannot be shorter than its own length field: corrupt
            raise ValueError(f"corrupt pax record length {length}")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def seek_to_sample(stream: IO[bytes], index: int) -> bool:
    """Position a seekable tar stream at the header of sample `index` (0-based), reading headers only.

    Groups members into samples exactly as `iter_tar_samples` does. Returns False (the stream position is
    then undefined) for anything unusual — GNU long names, sparse files, a bad checksum, the end of the
    archive, a compressed tar — so the caller falls back to reading the samples in order.
    """
    key: str | None = None
    seen = 0
    pending_name: str | None = None
    pending_offset = 0  # where the pax header of the next member starts: a seek must land there
    start = stream.tell()
    while True:
        offset = stream.tell()
        header = stream.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK) or not header_ok(header):
            return False
        kind = header[156:157]
        try:
            size = int(header[124:136].rstrip(b" \0") or b"0", 8)
        except ValueError:
            return False
        padded = -(-size // BLOCK) * BLOCK
        if kind == b"x":  # pax header for the next member: it may carry the real path
            data = stream.read(padded)[:size]
            try:
                pending_name = _pax_path(data)
            except ValueError:
                return False
            pending_offset = offset
            continue
        if kind not in _FILE_TYPES and kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):
            return False  # GNU long names/sparse, global pax headers...: leave it to tarfile
        name = pending_name
        member_offset = offset if name is None else pending_offset
        if name is None:
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        pending_name = None
        if kind in _FILE_TYPES:
            member_key, suffix = split_key(name)
            if suffix and not member_key.split("/")[-1].startswith("__") and member_key != key:
                if seen == index:
                    stream.seek(member_offset)
                    return stream.tell() > start or index == 0
                key, seen = member_key, seen + 1
        stream.seek(padded, 1)


def iter_tar_samples(
    stream: IO[bytes],
    url: str,
    on_error: Callable[[str, str, Exception], None] | None = None,
    max_member_bytes: int | None = MAX_MEMBER_BYTES,
    read_data: bool = True,
) -> Iterator[dict]:
    """Group the members of a tar stream into samples `{"__key__", "__url__", "__offset__", suffix: bytes}`.

    `__offset__` is the byte where the sample's first member (its pax header, if any) starts in the stream
    (manifest.py keeps them as the shard's sample index; a stream that cannot tell counts from where it was).

    Streams sequentially (works for S3 and gzipped tars). A truncated or corrupt tar ends the iteration
    after reporting the error through `on_error(kind, where, err)`; the samples read so far are kept.
    A member larger than `max_member_bytes` is never read (tar skips it in small blocks): its sample lists it in
    `__oversized__` instead. `read_data=False` reads names only (counting), every member's bytes empty.
    """
    import tarfile

    current: dict | None = None
    try:
        base = stream.tell()
    except (AttributeError, OSError, ValueError):
        base = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = split_key(member.name)
                if suffix == "" or key.split("/")[-1].startswith("__"):
                    continue
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url, "__offset__": base + member.offset}
                if not read_data:
                    current[suffix] = b""
                elif max_member_bytes is not None and member.size > max_member_bytes:
                    current.setdefault("__oversized__", []).append(f"{suffix} ({member.size} bytes)")
                else:
                    current[suffix] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as err:
        # The last, possibly partial sample is dropped: a truncated member would be garbage.
        current = None
        if on_error is None:
            raise
        on_error("truncated_shard", url, err)
    if current is not None:
        yield current
