"""The sample order: a pure function of (seed, epoch, manifests, weights, position). No I/O here.

Vocabulary (see README, "Data order"):
- A source's shards are cut into **pieces** (sample ranges; one piece per shard unless the source has
  fewer shards than streams) and, per epoch, a seeded permutation of the pieces is dealt round-robin to
  **P canonical streams**. P is fixed per run and independent of the world size.
- Inside a piece, samples come out in **windows** of W consecutive samples, each window in a seeded
  permutation. A stream's position is `StreamCursor(epoch, deal_index, slot)`.
- Position j of a source (the j-th sample it contributes to the run) is the (j // P)-th output of stream
  j % P. Step k draws its whole global batch from one source, chosen by the largest-deficit rule over
  the weights (exact proportions, no RNG).
- Global sample g of step k belongs to rank g % R; a rank's i-th sample belongs to worker i % K.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from open_vlm.data.manifest import ShardManifest


@dataclass(frozen=True)
class Piece:
    shard: int  # index into the manifest's shard list
    start: int  # first sample (inclusive) within the shard
    end: int  # last sample (exclusive)

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class StreamCursor:
    """Where a stream stands: epoch, index into its deal for that epoch, slot inside that piece."""

    epoch: int = 0
    deal_index: int = 0
    slot: int = 0  # slots consumed in the current piece (windowed-permutation order; holes count)


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def source_pieces(manifest: ShardManifest, num_streams: int) -> list[Piece]:
    """Cut shards into pieces so that every stream gets at least one piece per epoch when possible."""
    counts = [s.num_samples for s in manifest.shards]
    nonempty = [i for i, c in enumerate(counts) if c > 0]
    if not nonempty:
        return []
    per_shard = -(-num_streams // len(nonempty))  # ceil
    pieces = []
    for i in nonempty:
        parts = min(per_shard, counts[i])
        bounds = np.linspace(0, counts[i], parts + 1).round().astype(int)
        pieces.extend(Piece(i, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)
    return pieces


def effective_streams(manifest: ShardManifest, num_streams: int) -> int:
    """P for a source: the configured number, capped by its sample count so no stream is empty."""
    return max(1, min(num_streams, manifest.num_samples))


class SourceOrder:
    """The order of one source: which pieces each stream reads in each epoch, and in what order inside."""

    def __init__(self, manifest: ShardManifest, seed: int, source_index: int, num_streams: int, window: int):
        self.manifest = manifest
        self.seed = seed
        self.source_index = source_index
        self.num_streams = effective_streams(manifest, num_streams)
        self.window = max(1, window)
        self.pieces = source_pieces(manifest, self.num_streams)
        if not self.pieces:
            raise ValueError("source has no samples (empty manifest)")
        self._deal = lru_cache(maxsize=4)(self._deal_uncached)

    def _deal_uncached(self, epoch: int) -> np.ndarray:
        return _rng(self.seed, self.source_index, epoch, 0xD1).permutation(len(self.pieces))

    def stream_deal(self, stream: int, epoch: int) -> np.ndarray:
        """Piece indices stream `stream` reads in `epoch`, in order."""
        return self._deal(epoch)[stream :: self.num_streams]

    def piece_at(self, stream: int, cursor: StreamCursor) -> Piece | None:
        deal = self.stream_deal(stream, cursor.epoch)
        if cursor.deal_index >= len(deal):
            return None
        return self.pieces[int(deal[cursor.deal_index])]

    def slot_order(self, stream: int, cursor: StreamCursor, piece: Piece) -> np.ndarray:
        """Sample offsets within the piece, in output order: each window of W samples permuted."""
        deal_piece = int(self.stream_deal(stream, cursor.epoch)[cursor.deal_index])
        rng = _rng(self.seed, self.source_index, cursor.epoch, deal_piece, 0x5A)
        out = np.arange(piece.size)
        for start in range(0, piece.size, self.window):
            out[start : start + self.window] = start + rng.permutation(min(self.window, piece.size - start))
        return out

    def advance(self, stream: int, cursor: StreamCursor) -> StreamCursor:
        """The cursor after one more slot (moving to the next piece or epoch as needed)."""
        piece = self.piece_at(stream, cursor)
        slot = cursor.slot + 1
        if piece is not None and slot < piece.size:
            return StreamCursor(cursor.epoch, cursor.deal_index, slot)
        return self.next_piece(stream, cursor)

    def next_piece(self, stream: int, cursor: StreamCursor) -> StreamCursor:
        if cursor.deal_index + 1 < len(self.stream_deal(stream, cursor.epoch)):
            return StreamCursor(cursor.epoch, cursor.deal_index + 1, 0)
        return StreamCursor(cursor.epoch + 1, 0, 0)


class MixSchedule:
    """Which source each step draws from: the largest-deficit rule over normalised weights.

    Pure and counter-based: after k steps every source s has had within one batch of `w_s * k` batches.
    """

    def __init__(self, weights: list[float]):
        total = float(sum(weights))
        self.weights = [w / total for w in weights]

    def pick(self, step: int, batches_taken: list[int]) -> int:
        deficits = [w * (step + 1) - taken for w, taken in zip(self.weights, batches_taken)]
        return int(np.argmax(deficits))  # ties → lowest index

    def global_batch(
        self, step: int, batches_taken: list[int], positions: list[int], size: int, per_sample: bool = False
    ) -> list[tuple[int, int]]:
        """(source, source position) of each sample of step `step`'s global batch; advances the counters.

        Per batch (default): the whole batch from the source with the largest batch deficit. Per sample: each
        sample from the source with the largest sample deficit (exact to one sample over any prefix)."""
        if not per_sample:
            src = self.pick(step, batches_taken)
            batches_taken[src] += 1
            start = positions[src]
            positions[src] += size
            return [(src, start + t) for t in range(size)]
        out = []
        total = sum(positions)
        for _ in range(size):
            src = int(np.argmax([w * (total + 1) - n for w, n in zip(self.weights, positions)]))
            out.append((src, positions[src]))
            positions[src] += 1
            total += 1
        return out

    def sources(self, start_step: int, batches_taken: list[int], num_steps: int) -> list[int]:
        taken = list(batches_taken)
        out = []
        for step in range(start_step, start_step + num_steps):
            s = self.pick(step, taken)
            taken[s] += 1
            out.append(s)
        return out
