"""Sharded model + optimizer state through torch.distributed.checkpoint, on local disk or any fsspec URL.

Every rank writes its own shard; loading reshards to the current world size and strategy (FSDP2 ⇄ DDP ⇄
single), because the state dicts come from `get_state_dict`, which speaks in unsharded parameter names.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from open_vlm.storage import is_remote

log = logging.getLogger(__name__)

# Saving or loading in one process without a process group is what a single-process run means to do.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)


def writer_for(url: str):
    if is_remote(url):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter  # the fsspec backend

        return FsspecWriter(url, sync_files=False)
    return dcp.FileSystemWriter(url, sync_files=True)


def reader_for(url: str):
    if is_remote(url):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(url)
    return dcp.FileSystemReader(url)


def save_model_and_optimizer(url: str, model: nn.Module, optimizer, async_save: bool = False):
    """Write model + optimizer shards under `url`; returns a Future when `async_save`."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if async_save:
        return dcp.async_save(state, storage_writer=writer_for(url))
    dcp.save(state, storage_writer=writer_for(url))
    return None


def load_model_and_optimizer(url: str, model: nn.Module, optimizer) -> None:
    """Load model + optimizer state saved by `save_model_and_optimizer` (any world size / strategy)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    reader = reader_for(url)
    saved = {key[len("model.") :] for key in reader.read_metadata().state_dict_metadata if key.startswith("model.")}
    missing = sorted(set(model_sd) - saved)
    if missing:
        raise RuntimeError(f"{url}: model weights missing from the checkpoint: {missing[:5]}")
    # Optimizer state may lack parameters that never received a gradient (their state is still zero).
    dcp.load(state, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


@dataclass
class WeightsReport:
    loaded: int
    missing: list[str]  # in the model, not in the checkpoint (left as initialised)
    unexpected: list[str]  # in the checkpoint, not in the model (ignored)


def load_model_weights(url: str, model: nn.Module) -> WeightsReport:
    """Load only the model weights that the checkpoint and the model share; report the rest."""
    reader = reader_for(url)
    saved = {key[len("model.") :] for key in reader.read_metadata().state_dict_metadata if key.startswith("model.")}
    model_sd = get_model_state_dict(model)
    wanted = {k: v for k, v in model_sd.items() if k in saved}
    report = WeightsReport(len(wanted), sorted(set(model_sd) - saved), sorted(saved - set(model_sd)))
    dcp.load({"model": wanted}, storage_reader=reader, planner=DefaultLoadPlanner(allow_partial_load=True))
    set_model_state_dict(model, wanted, options=StateDictOptions(strict=False))
    return report
