"""The checkpointer's collectives, on a gloo process group of its own.

DCP's async save runs its collectives (plan gathers) in a background thread. Sharing the default group
with the training loop's all-reduces, the two threads' collectives pair up differently on each rank and
the job deadlocks; on a group of their own they cannot meet. The group is made once, at start, by every
rank (`new_checkpoint_group`), and everything the checkpointer agrees on goes through `CheckpointComm`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

T = TypeVar("T")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def new_checkpoint_group():
    """A gloo group over all ranks for checkpoint traffic (collective: every rank calls it, once); None alone."""
    return dist.new_group(backend="gloo") if _distributed() else None


class CheckpointComm:
    """Barrier, broadcast, gather and 'did any rank fail' on the checkpoint group (no-ops in a single process).

    Without a group (a checkpointer made outside the trainer) it uses the default group.
    """

    def __init__(self, group=None):
        self.group = group

    def _device(self) -> torch.device:
        """Where the collectives' tensors live: CPU for gloo (ours), the GPU for a default nccl group."""
        if self.group is not None or dist.get_backend() == "gloo":
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    @property
    def rank(self) -> int:
        return dist.get_rank() if _distributed() else 0

    @property
    def world(self) -> int:
        return dist.get_world_size() if _distributed() else 1

    def barrier(self) -> None:
        if _distributed():
            dist.barrier(group=self.group)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if not _distributed():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group, device=self._device())
        return box[0]

    def all_gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not _distributed():
            return [value]
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, value, group=self.group)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on some rank."""
        if not _distributed():
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self._device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=self.group)
        return bool(tensor.item() > 0)

    def from_rank0(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 only and give every rank its result, or raise its exception on every rank."""
        result, error = None, None
        if self.rank == 0:
            try:
                result = fn()
            except Exception as err:  # handed to the other ranks, so that no rank waits for ever
                error = err
        result, error = self.broadcast((result, error))
        if error is not None:
            raise error
        return result
