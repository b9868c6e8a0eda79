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
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from open_vlm.data.manifest import UrlColumn
from open_vlm.data.order import Slot, SourceOrder
from open_vlm.data.shards import MAX_MEMBER_BYTES, iter_tar_samples, open_url, seek_to_sample

log = logging.getLogger(__name__)

# Every kind of bad data the loader counts (checkpoints sum them across ranks as a fixed-size tensor).
HOLE_KINDS = (
    "missing_shard",
    "truncated_shard",
    "bad_image",
    "missing_field",
    "bad_json",
    "bad_array",
    "oversized_member",
    "other",
)

# Skipping this many samples forward in an open shard is cheaper by reading than by re-opening and seeking.
READ_AHEAD_LIMIT = 64


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


class _OpenShard:
    """A tar shard open for sequential reading from sample `next_offset` on."""

    def __init__(self, shard: int, url: str, start: int, max_member_bytes: int | None = MAX_MEMBER_BYTES):
        self.shard, self.url = shard, url
        self.errors: list[Exception] = []
        self.stream = open_url(url)
        skip = start
        if start > 0 and _seekable(self.stream):
            # Jump to the sample by reading tar headers only; anything unusual re-reads from the start.
            if seek_to_sample(self.stream, start):
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
        max_member_bytes: int | None = MAX_MEMBER_BYTES,
    ):
        self.order, self.urls = order, urls
        self.on_read = on_read  # told each URL before it is read (the hung-worker watchdog)
        self.max_member_bytes = max_member_bytes  # bigger tar members are not read: `oversized_member` holes
        self._open: _OpenShard | None = None
        self._window_key: tuple[int, int, int] | None = None
        self._window: list[dict | Hole] = []
        self._missing: dict[int, str] = {}  # shards that failed to open: the error, so they are tried once

    def fetch(self, slot: Slot) -> dict | Hole:
        """The raw sample (`{"__key__", "__url__", suffix: bytes}`) of `slot`, or the `Hole` it is."""
        window = slot.output // self.order.window
        key = (slot.epoch, slot.range_index, window)
        if key != self._window_key:
            self._window = self._load_window(*key)
            self._window_key = key
        start, _ = self.order.range_bounds(slot.range_index)
        return self._window[slot.layout - start - window * self.order.window]

    def _load_window(self, epoch: int, range_index: int, window: int) -> list[dict | Hole]:
        raws: list[dict | Hole] = []
        for shard, first, stop in self.order.window_span(epoch, range_index, window):
            raws.extend(self._read_run(shard, first, stop))
        return raws

    def _read_run(self, shard: int, first: int, stop: int) -> list[dict | Hole]:
        url = self.urls[shard]
        if self.on_read is not None:
            self.on_read(url)
        if shard in self._missing:
            return [Hole("missing_shard", url, None, self._missing[shard])] * (stop - first)
        current = self._open
        reusable = (
            current is not None
            and current.shard == shard
            and current.next_offset <= first <= current.next_offset + READ_AHEAD_LIMIT
        )
        if not reusable:
            self.close()
            try:
                current = self._open = _OpenShard(shard, url, first, self.max_member_bytes)
            except OSError as err:
                self._missing[shard] = str(err)
                return [Hole("missing_shard", url, None, str(err))] * (stop - first)
        assert current is not None
        current.skip(first - current.next_offset)  # read, not decoded: someone else's samples
        got: list[dict | Hole] = [_oversized(raw) for raw in current.read(stop - first)]
        if len(got) < stop - first:
            reason = current.errors[0] if current.errors else "fewer samples than the manifest says"
            got += [Hole("truncated_shard", url, None, str(reason))] * (stop - first - len(got))
        return got

    def close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None
