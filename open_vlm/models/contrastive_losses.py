"""CLIP's softmax and SigLIP's sigmoid image-text losses over the pairs of every rank, invalid pairs left out.

Both equal open_clip's `ClipLoss` / `SigLipLoss` on all-valid batches (tested), with three differences:
- `valid` (B,) bool leaves pairs out as rows and as columns (negatives); the mask travels with the features
  (one extra column), and the loss is normalised by the number of valid pairs of all ranks. A micro-batch with no
  valid pair anywhere gives exactly 0 with zero gradients.
- Features are exchanged with autograd-aware collectives (open_clip's `gather_with_grad`; SigLIP's neighbour
  exchange always is), so each rank's features get the gradient of every rank's loss term. Without it a rank's
  features got 1/W of their gradient once DDP/FSDP averaged over W ranks, while `logit_scale` got all of its own.
- Logits and losses are computed in fp32 whatever the features' dtype (bf16 under FSDP: 0.2-0.6% error), with
  autocast turned off inside (the trainer's autocast would otherwise run the matmuls in bf16).

Each rank returns W x (its share of the global sum) / (valid pairs of all ranks): the gradient averaging of
DDP/FSDP then yields exactly the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _with_mask(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Features plus the valid flag as a last column, so one exchange carries both."""
    return torch.cat([features, valid.to(features.dtype)[:, None]], dim=1)


def _split(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `_with_mask`: fp32 features and the bool mask."""
    return packed[:, :-1].float(), packed[:, -1] > 0.5


def gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' rows in rank order; the backward sends each rank the gradient of its own rows (summed)."""
    if world_size == 1:
        return tensor
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)


class PairLoss:
    """A loss over the image-text pairs of all ranks: this rank's (B, D) image and text features in, a scalar out."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    def __call__(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor,
        valid: torch.Tensor | None = None,
        logit_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`logit_scale`: the exponentiated scale; `valid` (B,) bool (None: all valid); `logit_bias`: SigLIP's."""
        n = image.shape[0]
        valid = torch.ones(n, dtype=torch.bool, device=image.device) if valid is None else valid.to(image.device)
        # The trainer calls losses inside its autocast (single / DDP with bf16 or fp16), which would run these
        # matmuls in half precision whatever the `.float()` casts say: autocast is off in here.
        with torch.autocast(image.device.type, enabled=False):
            bias = logit_bias.float() if logit_bias is not None else None
            return self.loss(image, text, logit_scale.float(), valid.bool(), bias)

    def loss(self, image, text, scale, valid, bias) -> torch.Tensor:
        raise NotImplementedError


class SoftmaxContrastiveLoss(PairLoss):
    """CLIP: symmetric cross-entropy over image-text logits; `local_loss` = only this rank's rows (less memory)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_loss: bool = False):
        super().__init__(rank, world_size)
        self.local_loss = local_loss

    def loss(self, image, text, scale, valid, bias) -> torch.Tensor:
        n, w = image.shape[0], self.world_size
        both = gather_with_grad(_with_mask(torch.cat([image, text], dim=1), valid), w)
        all_features, all_valid = _split(both)
        all_image, all_text = all_features.split(image.shape[1], dim=1)
        if self.local_loss and w > 1:
            rows = slice(self.rank * n, (self.rank + 1) * n)
            per_image = scale * all_image[rows] @ all_text.T
            per_text = scale * all_text[rows] @ all_image.T
            labels = torch.arange(n, device=image.device) + self.rank * n
            row_valid, factor = all_valid[rows], w
        else:  # every rank computes the whole loss; averaging W equal gradients changes nothing
            per_image = scale * all_image @ all_text.T
            per_text = per_image.T
            labels = torch.arange(all_image.shape[0], device=image.device)
            row_valid, factor = all_valid, 1
        if bias is not None:
            per_image, per_text = per_image + bias, per_text + bias
        total = _masked_cross_entropy(per_image, labels, row_valid, all_valid)
        total = total + _masked_cross_entropy(per_text, labels, row_valid, all_valid)
        return total * factor / (2 * all_valid.sum().clamp(min=1))


def _masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, row_valid: torch.Tensor, col_valid: torch.Tensor
) -> torch.Tensor:
    """Sum over valid rows of the cross-entropy over valid columns (invalid columns get probability 0)."""
    logits = logits.masked_fill(~col_valid[None, :], torch.finfo(logits.dtype).min)
    losses = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(row_valid, losses, torch.zeros_like(losses)).sum()


class SigmoidContrastiveLoss(PairLoss):
    """SigLIP: a binary loss per image-text pair; other ranks' texts come by open_clip's exchange (`dist_impl`)."""

    def __init__(self, rank: int = 0, world_size: int = 1, dist_impl: str | None = None):
        super().__init__(rank, world_size)
        self.dist_impl = dist_impl or "bidir"  # open_clip's default
        if self.dist_impl not in EXCHANGES:
            raise ValueError(f"siglip dist_impl must be one of {sorted(EXCHANGES)}, got {dist_impl!r}")

    def loss(self, image, text, scale, valid, bias) -> torch.Tensor:
        own_text = _with_mask(text, valid)
        blocks = [(own_text, True)]
        if self.world_size > 1:
            blocks += [(other, False) for other in EXCHANGES[self.dist_impl](self, own_text)]
        image32 = image.float()
        total, count = image32.new_zeros(()), valid.new_zeros((), dtype=torch.long)
        for packed, own in blocks:
            texts, text_valid = _split(packed)
            logits = scale * image32 @ texts.T + (bias if bias is not None else 0.0)
            labels = -torch.ones_like(logits)
            if own:
                labels = labels + 2 * torch.eye(logits.shape[0], device=logits.device)
            pair = valid[:, None] & text_valid[None, :]
            losses = -F.logsigmoid(labels * logits)
            total = total + torch.where(pair, losses, torch.zeros_like(losses)).sum()
            count = count + text_valid.sum()  # every rank's texts pass by once: the valid pairs of all ranks
        return total * self.world_size / count.clamp(min=1)

    # --- how other ranks' texts arrive (each returns the W-1 blocks of the other ranks) -------------------------
    def _neighbours(self) -> tuple[int, int]:
        return (self.rank - 1) % self.world_size, (self.rank + 1) % self.world_size

    def _bidir(self, text: torch.Tensor) -> list[torch.Tensor]:
        from open_clip.loss import neighbour_exchange_bidir_with_grad, neighbour_exchange_with_grad

        left, right = self._neighbours()
        out, to_left, to_right = [], text, text
        pairs, remainder = divmod(self.world_size - 1, 2)
        for _ in range(pairs):
            received = neighbour_exchange_bidir_with_grad(left, right, to_left, to_right)
            out += list(received)
            to_left, to_right = received
        if remainder:
            out.append(neighbour_exchange_with_grad(left, right, to_right))
        return out

    def _shift(self, text: torch.Tensor) -> list[torch.Tensor]:
        from open_clip.loss import neighbour_exchange_with_grad

        left, right = self._neighbours()
        out, to_right = [], text
        for _ in range(self.world_size - 1):
            to_right = neighbour_exchange_with_grad(left, right, to_right)
            out.append(to_right)
        return out

    def _reduce(self, text: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed.nn

        sent = [
            torch.distributed.nn.all_reduce(text * (self.rank == i), dist.ReduceOp.SUM) for i in range(self.world_size)
        ]
        others = [t for i, t in enumerate(sent) if i != self.rank]
        # Every rank must run the backward (an all_reduce) of every one of these collectives, which pair by call
        # order: the own block stays in the graph with weight 0, as in open_clip.
        others[0] = others[0] + 0.0 * sent[self.rank]
        return others

    def _gather(self, text: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed.nn

        return [t for i, t in enumerate(torch.distributed.nn.all_gather(text)) if i != self.rank]


EXCHANGES = {
    "bidir": SigmoidContrastiveLoss._bidir,
    "shift": SigmoidContrastiveLoss._shift,
    "reduce": SigmoidContrastiveLoss._reduce,
    "gather": SigmoidContrastiveLoss._gather,
}
