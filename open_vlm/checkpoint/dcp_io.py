"""Sharded model + optimizer state through torch.distributed.checkpoint, on local disk or any fsspec URL.

Every rank writes its own shard; loading reshards to the current world size and strategy (FSDP2 ⇄ DDP ⇄
single), because the state dicts come from `get_state_dict`, which speaks in unsharded parameter names.
Reads go through `dcp_safe` (no arbitrary unpickling); collectives go through the group the caller gives
(the checkpointer's own, see `collective.py`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # DCP's fsspec backend (private module)
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

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


def save_model_and_optimizer(url: str, model: nn.Module, optimizer, async_save: bool = False, group=None):
    """Write model + optimizer shards under `url` (collective over `group`); a Future when `async_save`."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if async_save:
        return dcp.async_save(state, storage_writer=writer_for(url), process_group=group)
    dcp.save(state, storage_writer=writer_for(url), process_group=group)
    return None


def saved_model_keys(url: str) -> set[str]:
    """Names of the model tensors in a checkpoint (its metadata only, through the restricted reader)."""
    metadata = reader_for(url).read_metadata()
    return {key[len("model.") :] for key in metadata.state_dict_metadata if key.startswith("model.")}


def _load(state: dict, reader, group) -> None:
    try:
        dcp.load(state, storage_reader=reader, planner=SafeLoadPlanner(allow_partial_load=True), process_group=group)
    except CheckpointException as err:
        _raise_unsafe(err)
        raise RuntimeError(f"reading checkpoint {reader.path} failed: {failure_summary(err)}") from None


class WeightsMismatch(ValueError):
    """A checkpoint's model weights are not this model's (another architecture): names or shapes differ."""


def check_same_weights(url: str, model_sd: dict) -> None:
    """Raise `WeightsMismatch` unless the checkpoint holds exactly the model's tensors, at the same shapes."""
    saved = {  # name -> shape (None for a non-tensor item)
        key[len("model.") :]: tuple(item.size) if hasattr(item, "size") else None
        for key, item in reader_for(url).read_metadata().state_dict_metadata.items()
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
        if saved[k] is not None and hasattr(model_sd[k], "shape") and saved[k] != tuple(model_sd[k].shape)
    ]
    if reshaped:
        k = reshaped[0]
        problems.append(
            f"{len(reshaped)} weights of another shape (e.g. {k}: {saved[k]} -> {tuple(model_sd[k].shape)})"
        )
    if problems:
        raise WeightsMismatch(f"{url} holds another model: " + "; ".join(problems))


def load_model_and_optimizer(url: str, model: nn.Module, optimizer, group=None) -> None:
    """Load model + optimizer state saved by `save_model_and_optimizer` (any world size / strategy)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    check_same_weights(url, model_sd)
    # Optimizer state may lack parameters that never received a gradient (their state is still zero).
    _load(state, reader_for(url), group)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


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
