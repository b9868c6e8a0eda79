"""Shard URLs to raw samples: brace expansion, fsspec opening (local, s3://, any URL), tar → grouped samples."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import IO

import braceexpand
import fsspec

log = logging.getLogger(__name__)

# S3/HTTP errors worth a retry before a shard counts as missing.
RETRY_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.5


def expand_urls(patterns: str | list[str]) -> list[str]:
    """Expand brace patterns (`x-{000..009}.tar`) into a flat list of URLs, keeping order."""
    if isinstance(patterns, str):
        patterns = [patterns]
    urls: list[str] = []
    for pattern in patterns:
        urls.extend(braceexpand.braceexpand(pattern))
    return urls


def open_url(url: str, mode: str = "rb") -> IO[bytes]:
    """Open a local path or any fsspec URL for streaming, retrying transient errors with backoff."""
    for attempt in range(RETRY_ATTEMPTS):
        try:
            return fsspec.open(url, mode).open()
        except FileNotFoundError:
            raise
        except OSError as err:  # includes botocore/aiohttp connection errors surfaced by s3fs
            if attempt == RETRY_ATTEMPTS - 1:
                raise
            delay = RETRY_BASE_SECONDS * 2**attempt
            log.warning("open %s failed (%s); retrying in %.1fs", url, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: key = path up to the first dot of the basename; suffix = the rest."""
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def iter_tar_samples(
    stream: IO[bytes], url: str, on_error: Callable[[str, str, Exception], None] | None = None
) -> Iterator[dict]:
    """Group the members of a tar stream into samples `{"__key__", "__url__", suffix: bytes}`.

    Streams sequentially (works for S3 and gzipped tars). A truncated or corrupt tar ends the iteration
    after reporting the error through `on_error(kind, where, err)`; the samples read so far are kept.
    """
    import tarfile

    current: dict | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, suffix = split_key(member.name)
                if suffix == "" or key.split("/")[-1].startswith("__"):
                    continue
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[suffix] = data
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        # The last, possibly partial sample is dropped: a truncated member would be garbage.
        current = None
        if on_error is None:
            raise
        on_error("truncated_shard", url, err)
    if current is not None:
        yield current
