"""Sharded model + optimizer state through torch.distributed.checkpoint, on local disk or any fsspec URL.

Every rank writes its own shard; loading reshards to the current world size and strategy (FSDP2 ⇄ DDP ⇄
single), because the state dicts come from `get_state_dict`, which speaks in unsharded parameter names.
Reads go through `dcp_safe` (no arbitrary unpickling); collectives go through the group the caller gives
(the checkpointer's own, see `collective.py`).
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import Future
from dataclasses import dataclass

import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # DCP's fsspec backend (private module)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor

from open_vlm.checkpoint.dcp_safe import SafeLoadPlanner, UnsafeCheckpoint, reader_for
from open_vlm.checkpoint.faults import maybe_fail_write
from open_vlm.storage import is_remote, local_path

log = logging.getLogger(__name__)

# Saving or loading in one process without a process group is what a single-process run means to do.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


class _FaultHook:
    def write_data(self, plan, planner):
        maybe_fail_write(f"{self.path}/shard.distcp")  # the drills' injected storage errors (no-op otherwise)
        return super().write_data(plan, planner)


class _FileSystemWriter(_FaultHook, dcp.FileSystemWriter):
    pass


class _FsspecWriter(_FaultHook, FsspecWriter):
    pass


def writer_for(url: str):
    if is_remote(url):
        return _FsspecWriter(url, sync_files=False)
    return _FileSystemWriter(local_path(url), sync_files=True)


def failure_summary(err: CheckpointException) -> str:
    """One line per failed rank of a DCP exception (its str() is a multi-line traceback)."""
    return "; ".join(f"rank {rank}: {type(exc).__name__}: {exc}" for rank, (exc, _) in err.failures.items())


def _raise_unsafe(err: CheckpointException) -> None:
    """Re-raise a refusal from our reader or planner that DCP wrapped on the way."""
    for exc, _ in err.failures.values():
        if isinstance(exc, UnsafeCheckpoint):
            raise exc from None


def save_model_and_optimizer(url: str, model: nn.Module, optimizer, group=None) -> None:
    """Write model + optimizer shards under `url` (collective over `group`)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=writer_for(url), process_group=group)


def has_persistent_buffers(model: nn.Module) -> bool:
    """Whether the model's state holds buffers (BatchNorm statistics...), which a forward pass may change."""
    return any(
        buffer is not None and name not in module._non_persistent_buffers_set
        for module in model.modules()
        for name, buffer in module._buffers.items()
    )


class _Stager(DefaultStager):
    """DCP's stager (buffers cached per source tensor, reused by every save), plus the drills' fault hook."""

    url = ""

    def _stage(self, state_dict, **kwargs):
        maybe_fail_write(f"{self.url}/staging")  # drills and tests: a slow (or failing) copy; no-op otherwise
        return super()._stage(state_dict, **kwargs)


class AsyncSaver:
    """Async saves that cost training almost nothing: staging buffers reused across saves (pinned on CUDA),
    the copy into them made in a background thread, the save plan cached, the shards written in another thread.

    The staged copy must be complete before anything changes the state: `wait_staged()` before the next
    optimizer step (the trainer calls it), so the copy overlaps the next step's forward and backward. A model
    with persistent buffers (changed by a forward) is staged before `save` returns instead.
    """

    def __init__(self, key: str):
        self.key = key  # the plan cache of this checkpointer (DCP's cache is per process, keyed by this)
        self._stager: _Stager | None = None
        self._staging: Future | None = None

    def _make_stager(self) -> _Stager:
        cuda = torch.cuda.is_available()
        # Made on the calling (training) thread: on CUDA it creates the staging stream there.
        return _Stager(
            StagingOptions(
                use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=True, use_non_blocking_copy=cuda
            )
        )

    def save(self, url: str, model: nn.Module, optimizer, group=None) -> Future:
        """Start writing model + optimizer shards under `url` (collective over `group`); the upload's future."""
        self.wait_staged()  # never restage into buffers a running copy still fills
        if self._stager is None:
            self._stager = self._make_stager()
        self._stager.url = url
        model_sd, optim_sd = get_state_dict(model, optimizer)
        if torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()  # the staging stream must read the finished update
        planner = DefaultSavePlanner(enable_plan_caching=True)
        planner._cached_plans_key = f"open_vlm-{self.key}"
        response = dcp.async_save(
            {"model": model_sd, "optim": optim_sd},
            storage_writer=writer_for(url),
            planner=planner,
            process_group=group,
            async_stager=self._stager,
        )
        self._staging = response.staging_completion
        if has_persistent_buffers(model):
            self.wait_staged()
        return response.upload_completion

    def wait_staged(self) -> None:
        """Block until the last save's copy of the state is complete (then training may change the state)."""
        staging, self._staging = self._staging, None
        if staging is not None:
            try:
                staging.result()
            except Exception as err:  # the upload future fails too: the checkpointer reports it there
                log.warning("staging the async checkpoint failed: %s", err)

    def close(self) -> None:
        self.wait_staged()
        if self._stager is not None:
            self._stager.close()
            self._stager = None


def saved_model_keys(url: str) -> set[str]:
    """Names of the model tensors in a checkpoint (its metadata only, through the restricted reader)."""
    metadata = reader_for(url).read_metadata()
    return {key[len("model.") :] for key in metadata.state_dict_metadata if key.startswith("model.")}


def _load(state: dict, reader, group, metadata=None) -> None:
    swaps = _scalars_as_saved(state, metadata or reader.read_metadata())
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(allow_partial_load=True), process_group=group)
    except CheckpointException as err:
        _raise_unsafe(err)
        failures = [exc for exc, _ in err.failures.values()]
        summary = f"reading checkpoint {reader.path} failed: {failure_summary(err)}"
        if any(isinstance(e, MemoryError) for e in failures):
            raise MemoryError(summary) from None
        if failures and all(isinstance(e, OSError) and not isinstance(e, FileNotFoundError) for e in failures):
            raise OSError(summary) from None  # the storage's errors, not the files'
        raise RuntimeError(summary) from None
    for node, key, held in swaps:
        node[key] = _shaped_like(node[key], held)


def _scalars_as_saved(state: dict, metadata) -> list[tuple[dict, str, torch.Tensor]]:
    """Swap the (1,) entries of `state` that the checkpoint holds as 0-D for 0-D tensors to load into (in place).

    CLIP's `logit_scale` (and its optimizer moments) is held with shape (1,) since FSDP2 refuses 0-D parameters;
    checkpoints written before that hold it 0-D, and DCP refuses any shape change. Returns (dict, key, held entry)."""
    swaps = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif isinstance(value, torch.Tensor):
                saved = metadata.state_dict_metadata.get(name)
                if isinstance(saved, TensorStorageMetadata) and saved_as_scalar(saved.size, value.shape):
                    device = value.to_local().device if isinstance(value, DTensor) else value.device
                    swaps.append((node, key, value))
                    node[key] = torch.empty((), dtype=value.dtype, device=device)

    walk(state, "")
    return swaps


def saved_as_scalar(saved_size, shape) -> bool:
    """Whether a checkpoint entry of `saved_size` is a 0-D save of an entry now held with `shape` (1,) (it loads)."""
    return tuple(saved_size) == () and tuple(shape) == (1,)  # a DTensor's shape is the global one


def _shaped_like(loaded: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """A 0-D value loaded for a (1,) entry, in the entry's form (sharded like it when it is a DTensor)."""
    if isinstance(held, DTensor):
        return distribute_tensor(loaded.reshape(held.shape), held.device_mesh, held.placements)
    return loaded.reshape(held.shape).to(held.device)


class WeightsMismatch(ValueError):
    """A checkpoint's model weights are not this model's (another architecture): names or shapes differ."""


def check_same_weights(url: str, model_sd: dict, metadata=None) -> None:
    """Raise `WeightsMismatch` unless the checkpoint holds exactly the model's tensors, at the same shapes."""
    metadata = metadata or reader_for(url).read_metadata()
    saved = {  # name -> shape (None for a non-tensor item)
        key[len("model.") :]: tuple(item.size) if hasattr(item, "size") else None
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith("model.")
    }
    problems = []
    missing, unexpected = sorted(set(model_sd) - set(saved)), sorted(set(saved) - set(model_sd))
    if missing:
        problems.append(f"{len(missing)} weights missing from the checkpoint (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} checkpoint weights this model lacks (e.g. {unexpected[:3]})")
    reshaped = [
        k
        for k in sorted(set(saved) & set(model_sd))
        if saved[k] is not None
        and hasattr(model_sd[k], "shape")
        and saved[k] != tuple(model_sd[k].shape)
        and not saved_as_scalar(saved[k], model_sd[k].shape)  # an old 0-D CLIP logit_scale: it loads
    ]
    if reshaped:
        k = reshaped[0]
        problems.append(
            f"{len(reshaped)} weights of another shape (e.g. {k}: {saved[k]} -> {tuple(model_sd[k].shape)})"
        )
    if problems:
        raise WeightsMismatch(f"{url} holds another model: " + "; ".join(problems))


def load_model_and_optimizer(url: str, model: nn.Module, optimizer, group=None, agree=None) -> None:
    """Load model + optimizer state saved by `save_model_and_optimizer` (any world size / strategy).

    `agree(error or None)`: called on every rank after its own reads and before DCP's collective load, so that one
    rank's failed read stops all of them (`load_errors.agree`); without it, the error is raised here."""
    agree = agree or _raise_if_set
    error = None
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        reader = reader_for(url)
        metadata = reader.read_metadata()
        check_same_weights(url, model_sd, metadata)
    except Exception as err:  # judged by `agree`, on every rank alike
        error = err
    agree(error)
    try:  # DCP's collective load (its errors reach every rank), then this rank's own steps
        # Optimizer state may lack parameters that never received a gradient (their state is still zero).
        _load(state, reader, group, metadata)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except Exception as err:
        error = err
    agree(error)


def _raise_if_set(error: BaseException | None) -> None:
    if error is not None:
        raise error


@dataclass
class WeightsReport:
    loaded: int
    missing: list[str]  # in the model, not in the checkpoint (left as initialised)
    unexpected: list[str]  # in the checkpoint, not in the model (ignored)

    @property
    def total(self) -> int:
        return self.loaded + len(self.missing)


def weights_report(url: str, model: nn.Module) -> WeightsReport:
    """Which of the model's weights a checkpoint holds (reads the metadata only)."""
    saved = saved_model_keys(url)
    names = set(get_model_state_dict(model))
    return WeightsReport(len(names & saved), sorted(names - saved), sorted(saved - names))


def load_model_weights(url: str, model: nn.Module, group=None) -> WeightsReport:
    """Load only the model weights that the checkpoint and the model share; report the rest."""
    report = weights_report(url, model)
    model_sd = get_model_state_dict(model)
    wanted = {k: v for k, v in model_sd.items() if k not in report.missing}
    _load({"model": wanted}, reader_for(url), group)
    set_model_state_dict(model, wanted, options=StateDictOptions(strict=False))
    return report
