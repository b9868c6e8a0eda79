"""The training data loader: mixed sources → this rank's micro-batches, with exact, elastic state.

Workers yield single processed samples in this rank's order (worker w makes the rank's samples i with
i % K == w; torch's DataLoader returns them round-robin, so the main process sees them in order) and the
main process batches them. The main process therefore knows exactly what was consumed: its state is a
few integers per stream, independent of prefetching, and restoring it restarts the workers there.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from open_vlm.data.consumed import consumed_record
from open_vlm.data.decode import decode_sample
from open_vlm.data.manifest import ShardManifest
from open_vlm.data.order import MixSchedule, SourceOrder, StreamCursor
from open_vlm.data.stream import StreamReader
from open_vlm.data.version import check_versions, manifest_version
from open_vlm.trainer.signals import ignore_stop_signals

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class Source:
    name: str
    modality: str
    weight: float
    manifest: ShardManifest


@dataclass
class LoaderSettings:
    seed: int
    global_batch: int  # samples per optimizer step, all ranks together
    micro_batch: int  # samples per forward pass on one rank
    rank: int = 0
    world: int = 1
    num_workers: int = 0
    num_streams: int = 64
    window: int = 32
    image_size: int = 224
    strict: bool = False
    prefetch_factor: int = 4
    mix_per_sample: bool = False  # mix sources per sample (same modality) instead of per batch

    def check(self) -> None:
        per_rank, rest = divmod(self.global_batch, self.world)
        if rest or per_rank % self.micro_batch:
            raise ValueError(
                f"global batch {self.global_batch} must be world ({self.world}) x micro batch "
                f"({self.micro_batch}) x accumulation steps"
            )


@dataclass
class LoaderState:
    """Where the run stands in the data: everything needed to continue the exact order."""

    step: int = 0
    batches_taken: list[int] = field(default_factory=list)  # per source
    positions: list[int] = field(default_factory=list)  # samples taken per source (n_s)
    # per source, per stream: [q_next, epoch, deal_index, slot]
    streams: list[list[list[int]]] = field(default_factory=list)


def _initial_state(orders: list[SourceOrder]) -> LoaderState:
    return LoaderState(
        0,
        [0] * len(orders),
        [0] * len(orders),
        [[[0, 0, 0, 0] for _ in range(o.num_streams)] for o in orders],
    )


class _RankSamples(IterableDataset):
    """Runs in each worker: computes this rank's sample order from the state and makes its share."""

    def __init__(self, sources, orders, settings, state, process):
        self.sources, self.orders, self.settings, self.state = sources, orders, settings, state
        self.process = process

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        s, st = self.settings, self.state
        schedule = MixSchedule([src.weight for src in self.sources])
        taken, positions = list(st.batches_taken), list(st.positions)
        readers: dict[tuple[int, int], StreamReader] = {}
        i, step = 0, st.step
        while True:
            plan = schedule.global_batch(step, taken, positions, s.global_batch, s.mix_per_sample)
            for src, j in plan[s.rank :: s.world]:  # rank r takes every R-th sample of the global batch
                if i % workers == worker:
                    yield self._make(src, j, readers)
                i += 1
            step += 1

    def _reader(self, src: int, stream: int, readers: dict) -> StreamReader:
        reader = readers.get((src, stream))
        if reader is None:
            q, epoch, deal_index, slot = self.state.streams[src][stream]
            source, image_size = self.sources[src], self.settings.image_size
            reader = StreamReader(
                self.orders[src],
                stream,
                StreamCursor(epoch, deal_index, slot),
                q,
                decode=lambda raw: decode_sample(raw, source.modality, image_size),
                strict=self.settings.strict,
            )
            readers[(src, stream)] = reader
        return reader

    def _make(self, src: int, j: int, readers: dict) -> dict:
        order = self.orders[src]
        stream, q = j % order.num_streams, j // order.num_streams
        reader = self._reader(src, stream, readers)
        holes = []
        while True:  # skip outputs of this stream owned by other workers/ranks (only when layouts don't divide)
            out = next(reader)
            if out.q == q:
                break
            if out.q > q:
                raise RuntimeError(f"stream {stream} of source {src} is past position {j}")
        holes.extend(out.holes)
        sample = self.process(out.sample, self.sources[src])
        sample["__meta__"] = {
            "source": src,
            "stream": stream,
            "q": q,
            "epoch": out.epoch,
            "cursor": (out.cursor.epoch, out.cursor.deal_index, out.cursor.slot),
            "key": out.sample["__key__"],
            "url": out.sample["__url__"],
            "holes": [(h.kind, h.url, h.key, h.message) for h in holes],
        }
        return sample


class ShardLoader:
    """Iterates micro-batches for this rank forever; `state_dict()` is exact at any step boundary."""

    def __init__(
        self,
        sources: list[Source],
        settings: LoaderSettings,
        process: Callable[[dict, Source], dict],
        collate: Callable[[list[dict]], dict],
    ):
        settings.check()
        self.sources, self.settings = sources, settings
        self.process, self.collate = process, collate
        self.orders = [
            SourceOrder(src.manifest, settings.seed, i, settings.num_streams, settings.window)
            for i, src in enumerate(sources)
        ]
        self.state = _initial_state(self.orders)
        # catalog: each source's dataset version (a hash of its manifest), saved in the state header
        self.versions = [manifest_version(src.manifest) for src in sources]
        self.bad_samples: Counter[str] = Counter()
        self._reported = 0
        layout = settings.world * max(1, settings.num_workers)
        for order, src in zip(self.orders, sources):
            if order.num_streams % layout or settings.global_batch % layout:
                log.warning(
                    "source %s: %d streams and global batch %d are not multiples of ranks x workers = %d; "
                    "the order is unchanged but some shards are read by more than one worker",
                    src.name,
                    order.num_streams,
                    settings.global_batch,
                    layout,
                )

    @property
    def accum_steps(self) -> int:
        s = self.settings
        return s.global_batch // s.world // s.micro_batch

    def _dataloader(self) -> DataLoader:
        dataset = _RankSamples(self.sources, self.orders, self.settings, self.state, self.process)
        workers = self.settings.num_workers
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=self.settings.prefetch_factor if workers > 0 else None,
            worker_init_fn=ignore_stop_signals,  # trainer/signals.py: SIGTERM is the rank's to handle
            generator=torch.Generator().manual_seed(self.settings.seed),  # never draws from the global RNG
        )

    def __iter__(self) -> Iterator[dict]:
        """Micro-batches; after each group of `accum_steps`, the state has advanced by one step."""
        samples = iter(self._dataloader())
        s = self.settings
        schedule = MixSchedule([x.weight for x in self.sources])
        while True:
            for micro_step in range(self.accum_steps):
                micro = [next(samples) for _ in range(s.micro_batch)]
                for sample in micro:
                    self._account(sample["__meta__"])
                if micro_step == self.accum_steps - 1:  # the step's data is all taken: advance first
                    st = self.state
                    schedule.global_batch(st.step, st.batches_taken, st.positions, s.global_batch, s.mix_per_sample)
                    st.step += 1
                yield self.collate(micro)

    def _account(self, meta: dict) -> None:
        row = self.state.streams[meta["source"]][meta["stream"]]
        if meta["q"] + 1 > row[0]:
            row[:] = [meta["q"] + 1, *meta["cursor"]]
        for kind, url, key, message in meta["holes"]:
            self.bad_samples[kind] += 1
            log.warning("skipped bad data (%s) in %s%s: %s", kind, url, f" key {key}" if key else "", message)

    # --- state -------------------------------------------------------------------------------------
    def local_state_dict(self) -> dict:
        """This rank's view of the state (its streams only are current); see `state_dict`."""
        state = self.state
        return {
            "version": STATE_VERSION,
            **self.state_dict_header(),
            "step": state.step,
            "batches_taken": list(state.batches_taken),
            "positions": list(state.positions),
            "streams": [[list(row) for row in rows] for rows in state.streams],
            "bad_samples": dict(self.bad_samples),
            "world": self.settings.world,
            "num_workers": self.settings.num_workers,
        }

    def state_dict(self) -> dict:
        """The global loader state (collective under torch.distributed: every rank must call it)."""
        local = self.local_state_dict()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
            return merge_rank_states(gathered)
        return local

    def load_state_dict(self, sd: dict, allow_data_change: bool = False) -> None:
        for key in ("seed", "num_streams", "window", "global_batch", "sources", "mixing"):
            mine = self.state_dict_header()[key]
            if sd.get(key, "batch" if key == "mixing" else None) != mine:
                raise ValueError(f"data state was saved with {key}={sd[key]!r}, this run has {mine!r}")
        # catalog: refuse a source whose dataset version changed (DataVersionError), unless allowed
        check_versions(sd, self.state_dict_header(), allow_data_change)
        streams = [[list(row) for row in rows] for rows in sd["streams"]]  # ours to mutate, not the caller's
        self.state = LoaderState(sd["step"], list(sd["batches_taken"]), list(sd["positions"]), streams)
        self.bad_samples = Counter(sd.get("bad_samples", {}))

    def state_dict_header(self) -> dict:
        return {
            "seed": self.settings.seed,
            "num_streams": [o.num_streams for o in self.orders],
            "window": self.settings.window,
            "global_batch": self.settings.global_batch,
            "sources": [src.name for src in self.sources],
            "versions": list(self.versions),  # catalog: dataset version per source
            "mixing": "sample" if self.settings.mix_per_sample else "batch",
        }

    def consumed(self, state: dict | None = None) -> list[dict]:
        """Per tar file touched: url, source, epoch, samples_read, complete (from a state dict)."""
        state = state or self.state_dict()
        return consumed_record(self.orders, [s.name for s in self.sources], state["streams"])


def merge_rank_states(states: list[dict]) -> dict:
    """Combine the state dicts that each rank computed locally into the global one."""
    merged = dict(states[0])
    merged["streams"] = _merge_streams([s["streams"] for s in states])
    merged["bad_samples"] = dict(sum((Counter(s["bad_samples"]) for s in states), Counter()))
    return merged


def _merge_streams(per_rank: list[list[list[list[int]]]]) -> list[list[list[int]]]:
    """Each stream's state is the one of the rank that consumed furthest into it (largest q)."""
    merged = [[list(row) for row in rows] for rows in per_rank[0]]
    for other in per_rank[1:]:
        for s, rows in enumerate(other):
            for p, row in enumerate(rows):
                if row[0] > merged[s][p][0]:
                    merged[s][p] = list(row)
    return merged


def default_collate_fn(samples: list[dict]) -> dict:
    """Stack tensors of equal shape; keep everything else as lists."""
    batch: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
