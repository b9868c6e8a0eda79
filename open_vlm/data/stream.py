"""Reading one canonical stream: pieces of tar shards, each window of samples in its seeded order."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from open_vlm.data.decode import SampleError
from open_vlm.data.order import SourceOrder, StreamCursor
from open_vlm.data.shards import iter_tar_samples, open_url, seek_to_sample

log = logging.getLogger(__name__)


@dataclass
class Hole:
    """A slot that produced no sample: why, and where."""

    kind: str  # missing_shard | truncated_shard | bad_image | missing_field | bad_json ...
    url: str
    key: str | None
    message: str


@dataclass
class StreamOutput:
    q: int  # index of this output within the stream (position j = stream + q * P)
    epoch: int  # the epoch of the piece this sample came from
    cursor: StreamCursor  # the stream's cursor after this output
    sample: dict  # decoded sample
    holes: list[Hole]  # slots skipped since the previous output of this stream


def _seekable(stream) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class StreamReader:
    """Yields the good outputs of stream `stream` of one source, starting at `cursor` with index `q`.

    Resuming inside a piece re-reads that piece from its start up to the current window (at most one piece
    per stream, whatever the position). Bad slots become holes: skipped, reported, never shifting the rest.
    """

    def __init__(
        self,
        order: SourceOrder,
        stream: int,
        cursor: StreamCursor,
        q: int,
        decode: Callable[[dict], dict],
        strict: bool = False,
    ):
        self.order = order
        self.stream = stream
        self.cursor = cursor
        self.q = q
        self.decode = decode
        self.strict = strict
        self._holes: list[Hole] = []
        self._empty_slots = 0  # consecutive slots without output (guards an all-bad source)
        self._it = self._run()

    def __next__(self) -> StreamOutput:
        return next(self._it)

    def _hole(self, kind: str, url: str, key: str | None, message: str) -> None:
        if self.strict:
            raise RuntimeError(f"bad data ({kind}) at {url}{' key ' + key if key else ''}: {message}")
        self._holes.append(Hole(kind, url, key, message))

    def _run(self) -> Iterator[StreamOutput]:
        order, window = self.order, self.order.window
        while True:
            piece = order.piece_at(self.stream, self.cursor)
            if piece is None:  # this stream's deal for the epoch is done
                self.cursor = StreamCursor(self.cursor.epoch + 1, 0, 0)
                continue
            url = order.manifest.shards[piece.shard].url
            slots = order.slot_order(self.stream, self.cursor, piece)
            samples = self._piece_samples(url, piece.start, piece.end)
            loaded_window, buffer = -1, []
            for slot in range(self.cursor.slot, piece.size):
                w = slot // window
                if w != loaded_window:
                    # Windows are read in order; resuming mid-piece skips (without decoding) to the window.
                    buffer = self._take_window(samples, w, loaded_window, window)
                    loaded_window = w
                raw = buffer[slots[slot] - w * window] if slots[slot] - w * window < len(buffer) else None
                epoch = self.cursor.epoch
                self.cursor = order.advance(self.stream, self.cursor)
                if raw is None:
                    continue  # the hole was reported when the shard ended early
                try:
                    decoded = self.decode(raw)
                except SampleError as err:
                    self._hole(err.kind, url, raw["__key__"], str(err))
                    self._guard()
                    continue
                decoded["__url__"] = url
                out = StreamOutput(self.q, epoch, self.cursor, decoded, self._holes)
                self._holes, self._empty_slots = [], 0
                self.q += 1
                yield out

    def _guard(self) -> None:
        self._empty_slots += 1
        if self._empty_slots > 2 * self.order.manifest.num_samples + 1:
            raise RuntimeError(f"stream {self.stream}: a whole epoch without one good sample")

    def _take_window(self, samples: Iterator[dict], w: int, loaded: int, window: int) -> list[dict]:
        skip = (w - loaded - 1) * window  # whole windows between the last loaded one and w
        for _ in itertools.islice(samples, skip):
            pass
        return list(itertools.islice(samples, window))

    def _piece_samples(self, url: str, start: int, end: int) -> Iterator[dict]:
        """Raw samples [start, end) of a shard; a missing or truncated shard yields fewer (holes reported)."""
        expected = end - start
        produced = 0
        try:
            stream = open_url(url)
        except OSError as err:
            self._hole("missing_shard", url, None, f"{err} ({expected} slots lost)")
            for _ in range(expected):
                self._guard()
            return
        errors: list[Exception] = []
        with stream:
            skip = start
            if start > 0 and _seekable(stream):
                # Jump to the piece by reading tar headers only; anything unusual re-reads from the start.
                if seek_to_sample(stream, start):
                    skip = 0
                else:
                    stream.seek(0)
            samples = iter_tar_samples(stream, url, on_error=lambda kind, where, err: errors.append(err))
            for sample in itertools.islice(samples, skip, skip + expected):
                produced += 1
                yield sample
        if produced < expected:
            reason = errors[0] if errors else "fewer samples than the manifest says"
            self._hole("truncated_shard", url, None, f"{reason} ({expected - produced} slots lost)")
            for _ in range(expected - produced):
                self._guard()
