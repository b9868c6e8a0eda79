"""Process groups and parallel strategies (single, DDP, FSDP2) with their precision handling.

A strategy wraps the model, says how to skip gradient sync on non-final micro-steps, clips gradients
correctly for its parameter layout, and provides the autocast context and grad scaler its precision needs.
The training loop knows nothing else about distribution.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from open_vlm.config.schema import TrainConfig

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join torchrun's process group when launched by it (nccl on GPU, gloo on CPU)."""
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


# What torch.distributed says when a peer is gone (gloo: its TCP pair breaks or times out; NCCL: aborted).
PEER_LOST = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL")


def peer_lost(err: BaseException) -> str | None:
    """One line for an error that means another rank died or hung (the job cannot go on), else None."""
    text = str(err).strip()
    if not (isinstance(err, dist.DistError) or any(marker in text for marker in PEER_LOST)):
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else type(err).__name__)
    reason = reason.split(" This is typically caused")[0].rstrip(". ")
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return (
        f"rank {rank} lost contact with another rank ({reason}): that rank died, was killed or hangs, so the job "
        "stops; resume from the last checkpoint once every rank can run"
    )


def all_reduce_sum(value: float | int, device: torch.device) -> float:
    """Sum a Python number over ranks (no-op single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor)


def all_reduce_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum several Python numbers over ranks in one collective (no-op single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shutdown_distributed() -> None:
    """Tear down every process group, its threads joined, while the interpreter is whole.

    A gloo group still alive when the interpreter finalises can abort a run that succeeded ("terminate called
    without an active exception"): a worker thread finishing the last collective needs the GIL to free its
    tensors, and a finalising interpreter ends that thread in the middle of C++. Freeing a group joins its threads
    while the GIL can still be had. `destroy_process_group` drops torch's references only; DDP, FSDP and the
    checkpointer hold theirs in reference cycles, which a collection frees, and DTensor's caches hold FSDP's mesh.
    Call this once the trainer is out of reach (`tests/trainer/test_parallel.py` checks that no gloo thread is left).
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _drop_dtensor_caches()
    gc.collect()


def _drop_dtensor_caches() -> None:
    """Empty DTensor's sharding caches (FSDP2 fills them, some in C++): what they hold keeps the device mesh, and
    with it the default group, alive. torch has no public call for this; its private ones are used where they exist."""
    redistribute = sys.modules.get("torch.distributed.tensor._redistribute")
    if redistribute is None:  # DTensor never used
        return
    from torch.distributed.tensor import _collective_utils as collectives
    from torch.distributed.tensor import debug

    for clear in (
        getattr(debug, "_clear_sharding_prop_cache", None),
        getattr(getattr(redistribute, "_gen_transform_infos", None), "cache_clear", None),
        getattr(redistribute, "clear_redistribute_planner_cache", None),
        getattr(getattr(getattr(collectives, "MeshTopoInfo", None), "build_from_mesh", None), "cache_clear", None),
    ):
        if clear is not None:
            clear()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Strategy:
    """Single process: the model as it is."""

    name = "single"

    def __init__(self, cfg: TrainConfig, info: DistInfo):
        self.cfg = cfg
        self.info = info
        self.dtype = DTYPES[cfg.precision]

    def wrap(self, model: nn.Module, units: list[nn.Module]) -> nn.Module:
        return model.to(self.info.device)

    def sync_context(self, model: nn.Module, sync: bool):
        """Context for one micro-step; `sync=False` skips the gradient all-reduce (accumulation)."""
        return contextlib.nullcontext()

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.dtype)

    def grad_scaler(self):
        """A grad scaler for fp16, else None."""
        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.info.device.type)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return float(norm)

    @property
    def grad_divisor(self) -> int:
        """How many ranks the gradient reduction averages over (losses are scaled up to undo it)."""
        return 1


class DDPStrategy(Strategy):
    name = "ddp"

    def wrap(self, model: nn.Module, units: list[nn.Module]) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(self.info.device)
        device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def sync_context(self, model: nn.Module, sync: bool):
        return contextlib.nullcontext() if sync else model.no_sync()

    @property
    def grad_divisor(self) -> int:
        return self.info.world


class FSDPStrategy(Strategy):
    """FSDP2 `fully_shard` on each declared unit, then the root; bf16/fp16 through MixedPrecisionPolicy."""

    name = "fsdp"

    def wrap(self, model: nn.Module, units: list[nn.Module]) -> nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        model = model.to(self.info.device)
        kwargs: dict = {"reshard_after_forward": self.cfg.reshard_after_forward}
        if self.dtype != torch.float32:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        if self.cfg.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for unit in units:
            fully_shard(unit, **kwargs)
        fully_shard(model, **kwargs)
        return model

    def sync_context(self, model: nn.Module, sync: bool):
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def autocast(self):
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts parameters and inputs

    def grad_scaler(self):
        if self.dtype != torch.float16:
            return None
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(self.info.device.type)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor: the norm over all shards
            norm = norm.full_tensor()
        return float(norm)

    @property
    def grad_divisor(self) -> int:
        return self.info.world


STRATEGIES: dict[str, type[Strategy]] = {"single": Strategy, "ddp": DDPStrategy, "fsdp": FSDPStrategy}


def build_strategy(cfg: TrainConfig, info: DistInfo) -> Strategy:
    if cfg.strategy == "single" and info.world > 1:
        raise ValueError(f"train.strategy single with {info.world} processes: use ddp or fsdp under torchrun")
    if cfg.strategy != "single" and not dist.is_initialized():
        # One process (a 1-GPU node, a plain `python -m`): DDP and FSDP still need a process group, so a config
        # written for many GPUs runs unchanged on one. A group of one needs no rendezvous.
        backend = "nccl" if info.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return STRATEGIES[cfg.strategy](cfg, info)


def apply_activation_checkpointing(model: nn.Module, units: list[nn.Module]) -> list[nn.Module]:
    """Recompute each unit's activations in backward; returns the (wrapped) units."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointWrapper,
    )
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing as apply_ac,
    )

    ids = {id(u) for u in units}
    apply_ac(model, check_fn=lambda m: id(m) in ids)
    return [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
