"""The consumed-shards record: which tar files a data position has read, how far, and which completely.

Everything follows from the position of each source (order.py): the epochs before `position // N` are done,
and in the current one every range c has given its first k_c outputs: whole windows (a prefix of the range)
plus some samples of the window in progress. `consumed_record` summarises that per source in O(streams)
(written into every checkpoint's meta.json); `consumed_files` lists every tar file touched (for `open-vlm
view`), computed the same way, so the two never disagree.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from open_vlm.data.order import SourceOrder

MAX_LISTED_PARTIAL = 256  # partly read shards named inline in meta.json; `open-vlm view` lists them all


@dataclass
class EpochProgress:
    """What positions [epoch·N, position) of one source read in the epoch in progress."""

    epoch: int
    samples_read: int
    intervals: list[tuple[int, int]] = field(default_factory=list)  # layout [a, b) read in full
    # windows in progress: (range, window index, first layout position, window size, outputs taken)
    windows: list[tuple[int, int, int, int, int]] = field(default_factory=list)


def epoch_progress(order: SourceOrder, position: int) -> EpochProgress:
    epoch, offset = divmod(int(position), order.total)
    progress = EpochProgress(epoch, offset)
    for c in range(min(order.num_streams, offset)):
        taken = (offset - c + order.num_streams - 1) // order.num_streams  # outputs k < taken of range c
        start, _ = order.range_bounds(c)
        whole, rest = divmod(taken, order.window)
        if whole:
            progress.intervals.append((start, start + whole * order.window))
        if rest:
            _, length = order.range_bounds(c)
            size = min(order.window, length - whole * order.window)
            progress.windows.append((c, whole, start + whole * order.window, size, rest))
    return progress


def _shard_counts(order: SourceOrder, progress: EpochProgress) -> tuple[int, Counter, list[tuple[int, int]]]:
    """(shards read in full inside intervals, samples read per other touched layout shard, full-shard spans).

    Layout shard indices index `order.layout(epoch)`; spans are [first, last) runs of layout shards read whole."""
    shards, ends = order.layout(progress.epoch)
    starts = ends - order.counts[shards]
    touched: Counter = Counter()
    full, spans = 0, []
    for a, b in progress.intervals:
        i, j = int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(ends, b - 1, side="right"))
        first_full = i if starts[i] >= a else i + 1
        last_full = j if ends[j] <= b else j - 1  # inclusive
        for k in {i, j} - set(range(first_full, last_full + 1)):
            touched[k] += int(min(ends[k], b) - max(starts[k], a))
        if last_full >= first_full:
            full += last_full - first_full + 1
            spans.append((first_full, last_full + 1))
    for c, window, first, size, taken in progress.windows:
        k = int(np.searchsorted(ends, first, side="right"))
        if first + size <= ends[k]:  # the whole window lies in one shard: which samples were taken is moot
            touched[k] += taken
            continue
        picked = first + order.window_order(progress.epoch, c, window)[:taken]
        for k in np.searchsorted(ends, picked, side="right").tolist():
            touched[k] += 1
    return full, touched, spans


def consumed_record(orders: list[SourceOrder], sources, positions: list[int]) -> list[dict]:
    """Per source: epochs done, the epoch in progress, shards read in full, and the partly read ones."""
    out = []
    for order, source, position in zip(orders, sources, positions):
        progress = epoch_progress(order, position)
        full, touched, _ = _shard_counts(order, progress)
        shards, _ = order.layout(progress.epoch)
        partial, more_full = [], 0
        for k, count in sorted(touched.items()):
            n = int(order.counts[shards[k]])
            if count >= n:
                more_full += 1
            else:
                partial.append({"url": source.manifest.urls[int(shards[k])], "samples_read": count, "num_samples": n})
        out.append(
            {
                "source": source.name,
                "epochs_complete": progress.epoch,
                "epoch": progress.epoch,
                "samples_read": progress.samples_read,
                "num_samples": order.total,
                "shards_complete": full + more_full,
                "shards_partial_count": len(partial),
                "shards_partial": partial[:MAX_LISTED_PARTIAL],
            }
        )
    return out


def consumed_files(orders: list[SourceOrder], sources, positions: list[int]) -> list[dict]:
    """One entry per tar file touched in each source's epoch in progress (earlier epochs: `epochs_complete`)."""
    out = []
    for order, source, position in zip(orders, sources, positions):
        progress = epoch_progress(order, position)
        _, touched, spans = _shard_counts(order, progress)
        shards, _ = order.layout(progress.epoch)
        read = dict(touched)
        for first, last in spans:
            for k in range(first, last):
                read[k] = int(order.counts[shards[k]])
        for k in sorted(read, key=lambda k: int(shards[k])):
            n = int(order.counts[shards[k]])
            out.append(
                {
                    "source": source.name,
                    "epoch": progress.epoch,
                    "epochs_complete": progress.epoch,
                    "url": source.manifest.urls[int(shards[k])],
                    "samples_read": read[k],
                    "num_samples": n,
                    "complete": read[k] >= n,
                }
            )
    return out
