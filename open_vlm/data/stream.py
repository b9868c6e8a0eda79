"""Reading the raw samples of one canonical stream: windows of tar samples, fetched by position.

A stream's positions walk one contiguous layout range per epoch (see order.py), so its reader keeps one tar
open and reads forward; a window's W raw samples are held (undecoded) while its outputs are handed out in
their seeded order. Resuming inside a shard seeks to the window by tar headers; samples that another worker
takes are read (tar is sequential) but never decoded. A missing or short shard gives `Hole`s, never shifting
any other position.
"""

from __future__ import annotations

import itertools
import logging
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from open_vlm.data.manifest import UrlColumn
from open_vlm.data.offsets import SampleOffsets
from open_vlm.data.order import Slot, SourceOrder
from open_vlm.data.shards import (
    BLOCK,
    MAX_MEMBER_BYTES,
    ShardUnreadable,
    header_ok,
    iter_tar_samples,
    open_url,
    seek_to_sample,
)

log = logging.getLogger(__name__)

# Every kind of bad data the loader counts (checkpoints sum them across ranks as a fixed-size tensor).
HOLE_KINDS = (
    "missing_shard",
    "truncated_shard",
    "bad_image",
    "missing_field",
    "bad_json",
    "bad_array",
    "bad_text",  # text members that are not UTF-8
    "bad_member",  # a member that cannot be read (a broken .gz)
    "oversized_member",
    "unfit_for_task",  # the sample decodes, but has none of the fields its source's task reads
    "other",
)

# Skipping this many samples forward in an open shard is cheaper by reading than by re-opening and seeking.
READ_AHEAD_LIMIT = 64
MIN_BLOCK, MAX_BLOCK = 1 << 20, 64 << 20  # bytes a remote read fetches at once: one stream's share, bounded
READ_SLACK = 64 << 10  # tarfile reads ahead in records; a block that ends just short costs a whole extra block
TRANSIENT_RETRIES = 3  # a read that fails mid-shard (connection reset, timeout) reopens there, with backoff
RETRY_SECONDS = 0.5


def _transient(error: BaseException | None) -> bool:
    """A storage hiccup worth reopening for, as opposed to a tar that really ends (truncated or corrupt)."""
    return isinstance(error, OSError) and not isinstance(error, tarfile.TarError | EOFError)


@dataclass(frozen=True)
class Hole:
    """A position whose sample could not be had: why, and where."""

    kind: str  # one of HOLE_KINDS
    url: str
    key: str | None
    message: str


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _lands_on_header(stream, at_byte: int) -> bool:
    """Seek to `at_byte` if a valid tar header starts there (a recorded offset of a shard since rewritten fails)."""
    stream.seek(at_byte)
    header = stream.read(BLOCK)
    stream.seek(at_byte)
    return len(header) == BLOCK and header != bytes(BLOCK) and header_ok(header)


class _OpenShard:
    """A tar shard open for sequential reading from sample `next_offset` on."""

    def __init__(
        self,
        shard: int,
        url: str,
        start: int,
        at_byte: int | None = None,
        block_size: int | None = None,
        max_member_bytes: int | None = MAX_MEMBER_BYTES,
    ):
        self.shard, self.url = shard, url
        self.errors: list[Exception] = []
        self.stream = open_url(url, block_size=block_size)
        skip = start
        if start > 0 and _seekable(self.stream):
            # Jump to the sample: straight to its recorded offset (offsets.py), else by reading tar headers only;
            # anything unusual re-reads from the start.
            if (at_byte is not None and _lands_on_header(self.stream, at_byte)) or seek_to_sample(self.stream, start):
                skip = 0
            else:
                self.stream.seek(0)
        self.samples: Iterator[dict] = iter_tar_samples(
            self.stream,
            url,
            on_error=lambda kind, where, err: self.errors.append(err),
            max_member_bytes=max_member_bytes,
        )
        self.next_offset = start - skip
        self.skip(skip)

    def skip(self, n: int) -> None:
        for _ in itertools.islice(self.samples, n):
            self.next_offset += 1

    def read(self, n: int) -> list[dict]:
        out = list(itertools.islice(self.samples, n))
        self.next_offset += len(out)
        return out

    def close(self) -> None:
        self.stream.close()


def _oversized(raw: dict) -> dict | Hole:
    """A sample with a member too big to read is a hole (its position stays used, like any bad sample's)."""
    if "__oversized__" not in raw:
        return raw
    what = ", ".join(raw["__oversized__"])
    return Hole("oversized_member", raw["__url__"], raw["__key__"], f"{what} over data.max_member_bytes: not read")


class StreamReader:
    """Raw samples of one stream of one source, fetched by position in increasing order."""

    def __init__(
        self,
        order: SourceOrder,
        urls: UrlColumn,
        on_read: Callable[[str], None] | None = None,
        offsets: SampleOffsets | None = None,
        max_member_bytes: int | None = MAX_MEMBER_BYTES,
    ):
        self.order, self.urls, self.offsets = order, urls, offsets
        self.on_read = on_read  # told each URL before it is read (the hung-worker watchdog)
        self.max_member_bytes = max_member_bytes  # bigger tar members are not read: `oversized_member` holes
        self._open: _OpenShard | None = None
        self._window_key: tuple[int, int, int] | None = None
        self._window: list[dict | Hole] = []
        # Per shard, what failed in which epoch: a shard that failed to open, or ended early, is not re-read for
        # every window of that epoch (the next epoch tries again: storage recovers, files get replaced).
        self._missing: dict[int, tuple[int, str]] = {}
        self._short: dict[int, tuple[int, int, str]] = {}  # (epoch, samples readable, why)

    def fetch(self, slot: Slot) -> dict | Hole:
        """The raw sample (`{"__key__", "__url__", suffix: bytes}`) of `slot`, or the `Hole` it is."""
        window = slot.output // self.order.window
        key = (slot.epoch, slot.range_index, window)
        if key != self._window_key:
            self._window_key = key  # first: opening a shard reads which range it serves
            self._window = self._load_window(*key)
        start, _ = self.order.range_bounds(slot.range_index)
        return self._window[slot.layout - start - window * self.order.window]

    def _load_window(self, epoch: int, range_index: int, window: int) -> list[dict | Hole]:
        raws: list[dict | Hole] = []
        for shard, first, stop in self.order.window_span(epoch, range_index, window):
            raws.extend(self._read_run(epoch, shard, first, stop))
        return raws

    def _open_options(self, epoch: int, shard: int, offset: int) -> tuple[int | None, int | None]:
        """(byte offset of sample `offset`, bytes this stream will read of the shard this epoch), when known.

        The second sizes remote reads: a stream reads its own range, usually a part of a shard, not 50 MiB ahead."""
        if self.offsets is None or self._window_key is None:
            return None, None
        count = int(self.order.counts[shard])
        byte_offsets = self.offsets.shard(shard, count)
        start, length = self.order.range_bounds(self._window_key[1])
        last_shard, last_offset = self.order.locate(epoch, start + length - 1)  # where this stream's range ends
        last = last_offset if last_shard == shard else count - 1
        sample = int(byte_offsets[-1] - byte_offsets[0]) // (count - 1) if count > 1 else 0
        # To end sample `last`, the tar reader reads the next sample's first member (and a record beyond).
        extent = int(byte_offsets[last] - byte_offsets[offset]) + 2 * sample + READ_SLACK
        return int(byte_offsets[offset]), min(max(extent, MIN_BLOCK), MAX_BLOCK)

    def _read_run(self, epoch: int, shard: int, first: int, stop: int) -> list[dict | Hole]:
        """Raw samples [first, stop) of `shard`; what cannot be read becomes holes (the rest of the order stays)."""
        url = self.urls[shard]
        if self.on_read is not None:
            self.on_read(url)
        missing = self._missing.get(shard)
        if missing is not None and missing[0] == epoch:  # failed to open in this epoch: next epoch tries again
            return [Hole("missing_shard", url, None, missing[1])] * (stop - first)
        short = self._short.get(shard)
        if short is not None and short[0] == epoch and first >= short[1]:  # past where it ends: no re-reading
            return [Hole("truncated_shard", url, None, short[2])] * (stop - first)
        got: list[dict | Hole] = []
        error: BaseException | None = None
        for attempt in range(TRANSIENT_RETRIES + 1):
            current = self._open_at(epoch, shard, url, first + len(got))
            if current is None:
                why = self._missing[shard][1]
                return got + [Hole("missing_shard", url, None, why)] * (stop - first - len(got))
            got += [_oversized(raw) for raw in current.read(stop - first - len(got))]
            if len(got) == stop - first:
                return got
            error = current.errors[-1] if current.errors else None
            self.close()
            if not _transient(error):
                break
            if attempt == TRANSIENT_RETRIES:  # an outage, not bad data: stop rather than lose the samples
                raise ShardUnreadable(
                    f"reading {url} failed {TRANSIENT_RETRIES + 1} times at sample {first + len(got)} ({error}): is the "
                    "storage reachable? The run stops here rather than skip the shard's samples; resume from the last "
                    "checkpoint once it is"
                ) from error
            log.warning("reading %s failed (%s); reopening at sample %d", url, error, first + len(got))
            time.sleep(RETRY_SECONDS * 2**attempt)
        reason = str(error) if error is not None else "fewer samples than the manifest says"
        self._short[shard] = (epoch, first + len(got), reason)
        return got + [Hole("truncated_shard", url, None, reason)] * (stop - first - len(got))

    def _open_at(self, epoch: int, shard: int, url: str, offset: int) -> _OpenShard | None:
        """The shard open at sample `offset`: the open one read forward when close enough, else reopened."""
        current = self._open
        if (
            current is None
            or current.shard != shard
            or not (current.next_offset <= offset <= current.next_offset + READ_AHEAD_LIMIT)
        ):
            self.close()
            try:
                at_byte, block_size = self._open_options(epoch, shard, offset)
                current = self._open = _OpenShard(shard, url, offset, at_byte, block_size, self.max_member_bytes)
            except OSError as err:  # not there (storage that keeps failing raises ShardUnreadable: the run stops)
                self._missing[shard] = (epoch, str(err))
                return None
        current.skip(offset - current.next_offset)  # read, not decoded: someone else's samples
        return current

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
