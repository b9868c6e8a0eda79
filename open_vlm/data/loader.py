"""The training data loader: mixed sources → this rank's micro-batches, with an exact, world-free state.

Per step, every worker computes the step's plan (plan.py), takes its share of this rank's slots, reads and
decodes exactly those samples (order.py, stream.py) and sends them as one packed chunk (chunks.py). The main
process receives the K chunks of the step in worker order, puts the samples back in slot order, fills each
bad sample's row with a copy of a good row marked invalid (`__valid__: False`: the collators give it no
supervision), collates the micro-batches and advances the state. The state is a few integers (the step,
groups and positions per source): the same on every rank, valid at any world size, restored without replay.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from open_vlm.data import chunks
from open_vlm.data.consumed import consumed_record
from open_vlm.data.decode import SampleError, decode_sample
from open_vlm.data.manifest import ShardManifest
from open_vlm.data.order import SourceOrder
from open_vlm.data.plan import Planner, PlanState, StepPlan
from open_vlm.data.shards import MAX_MEMBER_BYTES
from open_vlm.data.stages import StageClock
from open_vlm.data.stream import HOLE_KINDS, Hole, StreamReader
from open_vlm.data.version import check_versions, manifest_version
from open_vlm.data.watchdog import WorkerWatch
from open_vlm.data.workers import as_is, one_thread, release, release_flag, worker_init

log = logging.getLogger(__name__)

STATE_VERSION = 2
MAX_LOGGED_HOLES = 20  # per kind and process; the counts are exact regardless
BAD_RUN_SHARDS = 3  # an unbroken run of bad samples across this many shards means the source itself is bad
WATCH_POLL_S = 5.0  # how often the main process looks at the workers' heartbeats while it waits
_POLL_TIMEOUT = "DataLoader timed out after"  # torch's message when that poll expires (nothing else says it)


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
    prefetch_steps: int = 2  # steps each worker prepares ahead
    mix_per_sample: bool = False  # mix sources inside a batch, in groups of `mix_group` samples
    mix_group: int = 0  # samples per mixing group with mix_per_sample (0: see `group`)
    multiprocessing_context: str | None = None  # fork (Linux default) | spawn | forkserver
    worker_timeout_s: float = 300.0  # a worker silent this long is reported with its shard, and the run stops
    pin_memory: bool = False  # batches in page-locked memory (training on CUDA: copies to the GPU overlap)
    profile: bool = False  # count seconds per stage (`ShardLoader.stage_seconds`; open-vlm data bench --profile)
    max_member_bytes: int = MAX_MEMBER_BYTES  # a bigger tar member is not read: its sample is an `oversized_member`

    def check(self) -> None:
        per_rank, rest = divmod(self.global_batch, self.world)
        if self.micro_batch <= 0 or rest or per_rank % self.micro_batch:
            raise ValueError(
                f"global batch {self.global_batch} must be world ({self.world}) x micro batch "
                f"({self.micro_batch}) x accumulation steps"
            )

    @property
    def group(self) -> int:
        """Samples per mixing group: the whole global batch, or `mix_group` (default 8, or G if 8 does not divide)."""
        if not self.mix_per_sample:
            return self.global_batch
        if self.mix_group:
            return self.mix_group
        return 8 if self.global_batch % 8 == 0 else self.global_batch


def _per_source(value, n: int, what: str) -> list:
    values = list(value) if isinstance(value, list | tuple) else [value] * n
    if len(values) != n:
        raise ValueError(f"{len(values)} {what} for {n} sources")
    return values


class _RankSteps(IterableDataset):
    """Runs in each worker: yields, per step from `state`, this worker's share of the rank's samples."""

    def __init__(self, sources, orders, settings: LoaderSettings, state: PlanState, processors, watch=None):
        self.sources, self.orders, self.settings, self.state = sources, orders, settings, state
        self.processors, self.watch = processors, watch
        self.worker = 0
        self.clock = StageClock(settings.profile)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        self.worker = worker
        s = self.settings
        planner = Planner([src.weight for src in self.sources], s.seed, s.global_batch, s.group)
        state = self.state.copy()
        readers: dict[tuple[int, int], StreamReader] = {}
        self.clock.start()
        while True:
            plan = planner.next_step(state)
            self._beat()  # a new chunk is asked for: the silence before was waiting, not hanging
            mine = plan.rank_slots(s.rank, s.world)[worker::workers]
            samples, metas = [], []
            for source, position in mine:
                sample, meta = self._make(source, position, readers)
                samples.append(sample)
                metas.append(meta)
            packed = chunks.pack(samples)
            self.clock.lap("pack")
            yield {"step": plan.step, "worker": worker, "samples": packed, "meta": metas, "times": self.clock.take()}
            self.clock.start()

    def _make(self, src: int, position: int, readers: dict) -> tuple[dict | None, dict]:
        order, source = self.orders[src], self.sources[src]
        slot = order.slot(position)
        reader = readers.get((src, slot.stream))
        if reader is None:
            reader = readers[(src, slot.stream)] = StreamReader(
                order, source.manifest.urls, self._beat, source.manifest.sample_offsets, self.settings.max_member_bytes
            )
        raw = reader.fetch(slot)
        self._beat()
        self.clock.lap("read")
        meta = {"source": src, "position": position, "epoch": slot.epoch, "stream": slot.stream}
        if isinstance(raw, Hole):
            return self._hole(meta, raw)
        meta.update(key=raw["__key__"], url=raw["__url__"])
        try:
            decoded = decode_sample(raw, source.modality, self.settings.image_size)
            self.clock.lap("decode")
            decoded["__url__"] = raw["__url__"]
            # What seeds per-sample randomness (answer choice, augmentation): the same wherever it is made.
            decoded["__order__"] = (self.settings.seed, src, position)
            sample = self.processors[src](decoded, source)
            self.clock.lap("process")
        except SampleError as err:
            return self._hole(meta, Hole(err.kind, raw["__url__"], raw["__key__"], str(err)))
        return sample, meta

    def _beat(self, url: str | None = None) -> None:
        if self.watch is not None:
            self.watch.beat(self.worker, url)

    def _hole(self, meta: dict, hole: Hole) -> tuple[None, dict]:
        if self.settings.strict:
            where = f"{hole.url}{' key ' + hole.key if hole.key else ''}"
            raise RuntimeError(f"bad data ({hole.kind}) at {where}: {hole.message} (data.strict is on)")
        return None, {**meta, "key": hole.key, "url": hole.url, "hole": (hole.kind, hole.message)}


class ShardLoader:
    """Iterates micro-batches for this rank forever; `state_dict()` is exact at any step boundary."""

    def __init__(
        self,
        sources: list[Source],
        settings: LoaderSettings,
        process: Callable[[dict, Source], dict] | list[Callable],
        collate: Callable[[list[dict]], dict] | list[Callable],
    ):
        settings.check()
        self.sources, self.settings = sources, settings
        self.processors = _per_source(process, len(sources), "processors")
        self.collators = _per_source(collate, len(sources), "collators")
        if settings.mix_per_sample and len({id(c) for c in self.collators}) > 1:
            raise ValueError("data.mixing sample puts several sources in one batch: they must share one collator")
        self.planner = Planner([src.weight for src in sources], settings.seed, settings.global_batch, settings.group)
        self.orders = [
            SourceOrder(src.manifest.counts, settings.seed, i, settings.num_streams, settings.window)
            for i, src in enumerate(sources)
        ]
        self.state = self.planner.initial()
        self.versions = [manifest_version(src.manifest) for src in sources]  # catalog: saved in the header
        self.bad_samples: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()
        self._bad_run = [0] * len(sources)  # consecutive bad samples per source (an all-bad source stops)
        self._bad_urls: list[set[str]] = [set() for _ in sources]  # the shards that run of bad samples touched
        self._spare: dict[int, dict] = {}  # per source: a good processed sample, for all-bad micro-batches
        self._watch: WorkerWatch | None = None
        self._released = None  # raised when this loader's workers may stop (see `workers.worker_init`)
        self.stage_seconds: Counter[str] = Counter()  # with settings.profile: workers' stages summed, and main's
        self._warn_shared_reads()

    def _warn_shared_reads(self) -> None:
        s = self.settings
        layout = s.world * max(1, s.num_workers)
        for order, src in zip(self.orders, self.sources):
            if order.num_streams % layout or s.group % layout:
                log.warning(
                    "source %s: ranks x workers = %d does not divide its %d streams and mixing groups of %d: "
                    "the order is unchanged, but some shards are read (not decoded) by several workers",
                    src.name,
                    layout,
                    order.num_streams,
                    s.group,
                )

    @property
    def accum_steps(self) -> int:
        s = self.settings
        return s.global_batch // s.world // s.micro_batch

    def _dataloader(self) -> DataLoader:
        s = self.settings
        self._watch = (
            WorkerWatch(s.num_workers, s.worker_timeout_s, s.multiprocessing_context) if s.num_workers else None
        )
        self._released = release_flag(s.multiprocessing_context)
        dataset = _RankSteps(self.sources, self.orders, s, self.state, self.processors, self._watch)
        return DataLoader(
            dataset,
            batch_size=None,
            collate_fn=as_is,
            num_workers=s.num_workers,
            prefetch_factor=s.prefetch_steps if s.num_workers > 0 else None,
            timeout=min(WATCH_POLL_S, s.worker_timeout_s) if s.num_workers > 0 else 0,
            worker_init_fn=functools.partial(worker_init, self._released),
            # The loader never draws from the global torch RNG (the model's dropout stream stays its own).
            generator=torch.Generator().manual_seed(s.seed),
            multiprocessing_context=s.multiprocessing_context if s.num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[dict]:
        """Micro-batches; after each group of `accum_steps`, the state has advanced by one step."""
        parts = iter(self._dataloader())
        released = self._released
        workers = max(1, self.settings.num_workers)
        micro = self.settings.micro_batch
        clock = StageClock(self.settings.profile)
        try:
            while True:
                clock.start()
                step_chunks = [self._next_chunk(parts, self.state.step, w) for w in range(workers)]
                clock.lap("wait")
                with one_thread():
                    samples, metas = self._merge(step_chunks)
                plan = self.planner.next_step(self.state)  # the step's data is all here: advance first
                self._account(plan, metas)
                clock.lap("merge")
                for a in range(self.accum_steps):
                    rows = slice(a * micro, (a + 1) * micro)
                    with one_thread():
                        batch = self._collate(samples[rows], metas[rows])
                        clock.lap("collate")
                        if self.settings.pin_memory:
                            batch = pinned(batch)
                            clock.lap("pin")
                    self.stage_seconds.update(clock.take())
                    yield batch
                    clock.start()
        finally:  # the loader is closed (or collected): its workers may now stop on any signal
            release(released)

    def _next_chunk(self, parts: Iterator[dict], step: int, worker: int) -> dict:
        """Worker `worker`'s chunk of `step`; while waiting, that worker silent past `worker_timeout_s` stops the run.

        The DataLoader hands chunks out round-robin: a chunk from another step or worker means a worker ended
        (its error was raised already) or the protocol broke, and batches would be wrong: stop instead."""
        while True:
            try:
                chunk = next(parts)
                break
            except RuntimeError as err:
                if self._watch is None or not str(err).startswith(_POLL_TIMEOUT):
                    raise
                self._watch.check(worker)
        if (chunk["step"], chunk["worker"]) != (step, worker):
            raise RuntimeError(
                f"data worker {chunk['worker']} sent step {chunk['step']} where worker {worker}'s step {step} was "
                "due: a loader worker stopped early"
            )
        return chunk

    def _merge(self, step_chunks: list[dict]) -> tuple[list[dict | None], list[dict]]:
        """The rank's samples of one step in slot order (worker w made slots t with t % K == w)."""
        workers = len(step_chunks)
        per_worker = [(chunks.unpack(c["samples"]), c["meta"]) for c in step_chunks]
        for chunk in step_chunks:
            self.stage_seconds.update(chunk.get("times") or {})
        total = sum(len(m) for _, m in per_worker)
        samples: list[dict | None] = [None] * total
        metas: list[dict] = [{}] * total
        for w, (got, meta) in enumerate(per_worker):
            samples[w::workers], metas[w::workers] = got, meta
        return samples, metas

    def _account(self, plan: StepPlan, metas: list[dict]) -> None:
        for meta in metas:
            src = meta["source"]
            if "hole" not in meta:
                self._bad_run[src], self._bad_urls[src] = 0, set()
                continue
            kind, message = meta["hole"]
            self.bad_samples[kind if kind in HOLE_KINDS else "other"] += 1
            self._bad_run[src] += 1
            if len(self._bad_urls[src]) < BAD_RUN_SHARDS:
                self._bad_urls[src].add(meta["url"])
            if self._logged[kind] < MAX_LOGGED_HOLES:
                self._logged[kind] += 1
                key = f" key {meta['key']}" if meta.get("key") else ""
                more = (
                    " (further ones of this kind are counted, not logged)"
                    if self._logged[kind] == MAX_LOGGED_HOLES
                    else ""
                )
                log.warning("skipped bad data (%s) in %s%s: %s%s", kind, meta["url"], key, message, more)
            # A missing shard is a long run of holes on the stream that reads it; a source is dead only when the
            # run also spans several shards (every shard it has, if fewer).
            order = self.orders[src]
            shards = min(BAD_RUN_SHARDS, len(order.counts) if order.nonempty is None else len(order.nonempty))
            if self._bad_run[src] >= min(order.total, 1000) and len(self._bad_urls[src]) >= shards:
                raise RuntimeError(
                    f"source {self.sources[src].name}: the last {self._bad_run[src]} samples were all bad "
                    f"(counts so far: {dict(self.bad_samples)}; last: {kind} in {meta['url']}: {message})"
                )

    def _collate(self, samples: list[dict | None], metas: list[dict]) -> dict:
        """Collate one micro-batch; a bad sample's row is a copy of a good row, marked `__valid__: False`."""
        rows = []
        good = [i for i, s in enumerate(samples) if s is not None]
        for i, (sample, meta) in enumerate(zip(samples, metas)):
            if sample is not None:
                self._spare[meta["source"]] = sample
                rows.append({**sample, "__meta__": meta})
                continue
            donor = min(good, key=lambda g: (abs(g - i), g)) if good else None
            template = samples[donor] if donor is not None else self._template(meta["source"])
            rows.append({**template, "__valid__": False, "__meta__": meta})
        return self.collators[metas[0]["source"]](rows)

    def _template(self, src: int) -> dict:
        """A good processed sample of source `src` to give an all-bad micro-batch its shape (never trained on)."""
        if src not in self._spare:
            self._spare[src] = self._read_ahead(src)
        return self._spare[src]

    def _read_ahead(self, src: int) -> dict:
        dataset = _RankSteps(self.sources, self.orders, self.settings, self.state, self.processors)
        readers: dict = {}
        start = self.state.positions[src]
        for position in range(start, start + min(self.orders[src].total, 1000)):
            sample, _ = dataset._make(src, position, readers)
            if sample is not None:
                return sample
        raise RuntimeError(f"source {self.sources[src].name}: no good sample in the next 1000 positions")

    # --- state -------------------------------------------------------------------------------------
    def state_dict_header(self) -> dict:
        s = self.settings
        return {
            "seed": s.seed,
            "num_streams": [o.num_streams for o in self.orders],
            "window": s.window,
            "global_batch": s.global_batch,
            "sources": [src.name for src in self.sources],
            "versions": list(self.versions),  # catalog: dataset version per source
            "mixing": "sample" if s.mix_per_sample else "batch",
            "mix_group": s.group,
        }

    def local_state_dict(self) -> dict:
        """This rank's state: the position is the same on every rank; `bad_samples` counts this rank's."""
        st = self.state
        return {
            "version": STATE_VERSION,
            **self.state_dict_header(),
            "step": st.step,
            "groups_taken": list(st.groups_taken),
            "positions": list(st.positions),
            "bad_samples": dict(self.bad_samples),
            "world": self.settings.world,
            "num_workers": self.settings.num_workers,
        }

    def state_dict(self) -> dict:
        """The global loader state (collective under torch.distributed: every rank must call it)."""
        local = self.local_state_dict()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            counts = torch.tensor([self.bad_samples.get(k, 0) for k in HOLE_KINDS], dtype=torch.int64, device=device)
            dist.all_reduce(counts)
            local["bad_samples"] = {k: int(v) for k, v in zip(HOLE_KINDS, counts.tolist()) if v}
        return local

    def load_state_dict(self, sd: dict, allow_data_change: bool = False) -> None:
        if sd.get("version") != STATE_VERSION:
            raise ValueError(
                f"the data state is format {sd.get('version', 1)}, this loader reads format {STATE_VERSION} (the "
                "sample order changed in open_vlm's data order v2, so the old position names other samples); "
                "resume with --checkpoint.reset_data true to keep the weights and optimizer and restart the data"
            )
        mine = self.state_dict_header()
        for key in (*mine, "step", "groups_taken", "positions"):
            if key not in sd:
                raise ValueError(f"the data state has no {key!r}: it is damaged or not an open_vlm loader state")
        for key in ("seed", "num_streams", "window", "global_batch", "sources", "mixing", "mix_group"):
            if sd[key] != mine[key]:
                raise ValueError(f"data state was saved with {key}={sd[key]!r}, this run has {mine[key]!r}")
        check_versions(sd, mine, allow_data_change)  # catalog: a changed dataset version is refused
        self.state = PlanState(int(sd["step"]), [int(x) for x in sd["groups_taken"]], [int(x) for x in sd["positions"]])
        # The saved counts are the whole run's: one rank carries them on, or every resume would multiply them.
        self.bad_samples = Counter(sd.get("bad_samples", {}) if self.settings.rank == 0 else {})
        self._bad_run = [0] * len(self.sources)
        self._bad_urls = [set() for _ in self.sources]

    def consumed(self, state: dict | None = None) -> list[dict]:
        """Which tar files the state has read, how far, which complete (compact: see consumed.py)."""
        state = state or self.local_state_dict()
        return consumed_record(self.orders, self.sources, state["positions"])


def pinned(batch: dict) -> dict:
    """The batch with its tensors in page-locked memory, so `.to(cuda, non_blocking=True)` really overlaps."""
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
