"""The sample order of one source: a pure function of (seed, manifest, position). No I/O here.

A source of N samples in its non-empty shards, read by P canonical streams (P = min(data.num_streams, N)):
- Epoch e lays the shards end to end in a seeded permutation: layout positions 0..N-1.
- The layout is cut into P contiguous **ranges** of m or m + 1 samples (m = N // P; the first N % P ranges
  are the longer ones).
- Position j of the source (the j-th sample it gives the run) lies in epoch e = j // N at offset o = j % N:
  it is output k = o // P of range c = o % P. Inside a range, windows of W consecutive samples come out in a
  seeded permutation.
- Stream p = j % P reads, epoch after epoch, the range (p - e·N) mod P: one contiguous run of tar samples per
  epoch, so a stream's reads are sequential and it never waits for another stream.

So within positions [e·N, (e+1)·N) every sample appears exactly once, whatever the shard sizes, P, ranks or
workers; nothing here depends on the world size. Memory is a few arrays per epoch (O(shards)), never objects
per shard or per piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def seed_entropy(key: int) -> int:
    """A key as SeedSequence entropy: any int, without folding different seeds together (negatives too)."""
    key = int(key)
    return 2 * key if key >= 0 else -2 * key - 1


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed_entropy(k) for k in keys]))


@dataclass(frozen=True)
class Slot:
    """Where position `position` of a source reads its sample."""

    position: int
    epoch: int
    stream: int  # p = position % P
    range_index: int  # c: the range of the epoch's layout this stream reads
    output: int  # k: the output index inside that range
    layout: int  # the sample's place in the epoch's layout (0..N-1)
    shard: int  # index into the manifest
    offset: int  # sample index inside the shard


class SourceOrder:
    """Which sample each position of one source reads (`slot`), and the epoch layouts behind it."""

    CACHED_EPOCHS = 3  # streams cross an epoch end at nearly the same position: a few layouts suffice

    def __init__(self, counts: np.ndarray, seed: int, source_index: int, num_streams: int, window: int):
        counts = np.asarray(counts)
        self.total = int(counts.sum(dtype=np.int64))
        if self.total <= 0:
            raise ValueError("source has no samples (every shard of its manifest is empty)")
        self.seed, self.source_index = int(seed), int(source_index)
        self.num_streams = max(1, min(int(num_streams), self.total))
        self.window = max(1, int(window))
        self.range_len, self.longer = divmod(self.total, self.num_streams)
        small = counts.max() < 2**31 and len(counts) < 2**31
        self.counts = counts.astype(np.int32, copy=False) if small else counts.astype(np.int64, copy=False)
        empty = self.counts == 0
        # Layouts permute the non-empty shards; when none is empty (the usual case) that is every shard.
        self.nonempty = np.flatnonzero(~empty).astype(self.counts.dtype) if empty.any() else None
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._windows: dict[tuple[int, int, int], np.ndarray] = {}

    def __getstate__(self) -> dict:  # caches are rebuilt in each process (spawned workers included)
        return {**self.__dict__, "_layouts": {}, "_windows": {}}

    # --- the epoch layout ----------------------------------------------------------------------------
    def layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(manifest shard index of each layout shard, cumulative sample count at its end) for `epoch`."""
        found = self._layouts.get(epoch)
        if found is None:
            count = len(self.counts) if self.nonempty is None else len(self.nonempty)
            perm = _rng(self.seed, self.source_index, epoch, 0xD1).permutation(count).astype(self.counts.dtype)
            shards = perm if self.nonempty is None else self.nonempty[perm]
            found = (shards, np.cumsum(self.counts[shards], dtype=np.int64))
            if len(self._layouts) >= self.CACHED_EPOCHS:
                self._layouts.pop(min(self._layouts))
            self._layouts[epoch] = found
        return found

    def range_bounds(self, range_index: int) -> tuple[int, int]:
        """(first layout position, length) of range c."""
        c = range_index
        return c * self.range_len + min(c, self.longer), self.range_len + (c < self.longer)

    def window_order(self, epoch: int, range_index: int, window: int) -> np.ndarray:
        """The seeded permutation of window `window` of range `range_index` in `epoch`."""
        key = (epoch, range_index, window)
        found = self._windows.get(key)
        if found is None:
            _, length = self.range_bounds(range_index)
            size = min(self.window, length - window * self.window)
            found = _rng(self.seed, self.source_index, epoch, range_index, window, 0x5A).permutation(size)
            if len(self._windows) >= 4 * self.num_streams:
                self._windows.clear()
            self._windows[key] = found
        return found

    # --- positions -----------------------------------------------------------------------------------
    def slot(self, position: int) -> Slot:
        """The sample that position `position` of this source reads."""
        epoch, offset = divmod(int(position), self.total)
        c, k = offset % self.num_streams, offset // self.num_streams
        start, _ = self.range_bounds(c)
        window, inside = divmod(k, self.window)
        layout = start + window * self.window + int(self.window_order(epoch, c, window)[inside])
        shard, shard_offset = self.locate(epoch, layout)
        return Slot(int(position), epoch, int(position) % self.num_streams, c, k, layout, shard, shard_offset)

    def locate(self, epoch: int, layout: int) -> tuple[int, int]:
        """(manifest shard index, sample offset inside it) of layout position `layout` in `epoch`."""
        shards, ends = self.layout(epoch)
        i = int(np.searchsorted(ends, layout, side="right"))
        shard = int(shards[i])
        return shard, int(layout - (ends[i] - self.counts[shard]))

    def window_span(self, epoch: int, range_index: int, window: int) -> list[tuple[int, int, int]]:
        """The raw samples a window needs: (shard, first offset, end offset) runs, in layout order."""
        start, length = self.range_bounds(range_index)
        lo = start + window * self.window
        hi = start + min(length, (window + 1) * self.window)
        shards, ends = self.layout(epoch)
        runs = []
        while lo < hi:
            i = int(np.searchsorted(ends, lo, side="right"))
            shard = int(shards[i])
            first = int(ends[i] - self.counts[shard])
            stop = min(hi, int(ends[i]))
            runs.append((shard, lo - first, stop - first))
            lo = stop
        return runs

    def streams_read(self, rank: int, world: int) -> int:
        """How many ranks read each stream at most, when `world` does not divide P (1: exclusive)."""
        return world // np.gcd(world, self.num_streams) if world > 1 else 1
