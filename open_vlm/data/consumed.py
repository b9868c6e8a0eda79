"""The consumed-shards record: which tar files a loader state has read, how far, and which are complete."""

from __future__ import annotations

from collections import defaultdict

from open_vlm.data.order import SourceOrder


def consumed_record(orders: list[SourceOrder], names: list[str], streams: list[list[list[int]]]) -> list[dict]:
    """One entry per (source, epoch, tar file) touched in the epochs still in progress.

    `streams[s][p] = [q_next, epoch, deal_index, slot]`. Epochs that every stream of a source has finished
    are summarised as `epochs_complete` on each entry rather than listed file by file.
    """
    out = []
    for src, (order, name) in enumerate(zip(orders, names)):
        rows = streams[src]
        epochs = [row[1] for row in rows]
        first = min(epochs)
        read: dict[tuple[int, int], int] = defaultdict(int)  # (epoch, shard) -> slots read
        for p, (_, epoch_now, deal_index, slot) in enumerate(rows):
            for epoch in range(first, epoch_now + 1):
                deal = order.stream_deal(p, epoch)
                done = len(deal) if epoch < epoch_now else deal_index
                for piece_index in deal[:done]:
                    piece = order.pieces[int(piece_index)]
                    read[(epoch, piece.shard)] += piece.size
                if epoch == epoch_now and deal_index < len(deal) and slot:
                    piece = order.pieces[int(deal[deal_index])]
                    read[(epoch, piece.shard)] += slot
        for (epoch, shard), count in sorted(read.items()):
            info = order.manifest.shards[shard]
            out.append(
                {
                    "source": name,
                    "epoch": epoch,
                    "url": info.url,
                    "samples_read": count,
                    "num_samples": info.num_samples,
                    "complete": count >= info.num_samples,
                    "epochs_complete": first,
                }
            )
    return out
