"""Training losses by name (`train.loss`): each maps model outputs + batch to a `LossOutput`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from open_vlm.names import lookup

IGNORE = -100  # label of positions that are not supervised (prefix, image tokens, padding)


@dataclass
class LossOutput:
    """A loss and the counts the trainer and logger need.

    `reduction == "sum"`: `loss` is a sum over `count` items; the trainer divides by the count summed over
    micro-batches and ranks (exact under gradient accumulation). `"mean"`: `loss` is already a mean.
    """

    loss: torch.Tensor
    count: int
    reduction: str = "sum"
    parts: dict[str, float] = field(default_factory=dict)  # named components, for logging


LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], LossOutput]
_LOSSES: dict[str, Callable[..., LossFn]] = {}


def register_loss(name: str):
    """Decorator: register a factory `(**options) -> loss_fn(outputs, batch) -> LossOutput` under `name`."""

    def add(factory):
        _LOSSES[name] = factory
        return factory

    return add


def build_loss(name: str, **options) -> LossFn:
    """The loss `name` (`next_token`, `clip`, `siglip`, `lxmert`) built with `options` (rank, world_size...)."""
    return lookup(_LOSSES, name, "train.loss")(**options)


def loss_names() -> list[str]:
    return sorted(_LOSSES)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropies over supervised positions (labels aligned with inputs; -100 skipped)."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


@register_loss("next_token")
def next_token(**_) -> LossFn:
    """Causal / prefix-LM loss: summed over supervised next tokens (the prefix carries label -100)."""

    def fn(outputs, batch) -> LossOutput:
        labels = batch["labels"].to(outputs["logits"].device)
        count = int((labels[:, 1:] != IGNORE).sum())
        return LossOutput(next_token_loss_sum(outputs["logits"], labels), count)

    return fn


@register_loss("clip")
def clip(rank: int = 0, world_size: int = 1, local_loss: bool = False, gather_with_grad: bool = False, **_) -> LossFn:
    """open_clip's ClipLoss (softmax over the gathered batch) on normalised image/text features."""
    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
    return _contrastive(loss, use_bias=False)


@register_loss("siglip")
def siglip(rank: int = 0, world_size: int = 1, dist_impl: str | None = None, **_) -> LossFn:
    """open_clip's SigLipLoss (pairwise sigmoid; neighbour exchange across ranks)."""
    from open_clip.loss import SigLipLoss

    return _contrastive(SigLipLoss(rank=rank, world_size=world_size, dist_impl=dist_impl), use_bias=True)


def _contrastive(loss: nn.Module, use_bias: bool) -> LossFn:
    def fn(outputs, batch) -> LossOutput:
        args = [outputs["image_features"], outputs["text_features"], outputs["logit_scale"]]
        if use_bias:
            args.append(outputs["logit_bias"])
        return LossOutput(loss(*args), int(outputs["image_features"].shape[0]), reduction="mean")

    return fn


@register_loss("lxmert")
def lxmert(mlm_weight: float = 1.0, itm_weight: float = 1.0, **_) -> LossFn:
    """LXMERT pretraining: masked-LM (`labels`, -100 where unmasked) + image-text matching (`matched_label` 0/1)."""

    def fn(outputs, batch) -> LossOutput:
        logits = outputs["prediction_logits"]
        labels = batch["labels"].to(logits.device)
        mlm = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        score = outputs["cross_relationship_score"].float()
        itm = F.cross_entropy(score, batch["matched_label"].to(score.device).flatten())
        masked = int((labels != IGNORE).sum())
        mlm = mlm if masked else logits.sum() * 0.0  # a batch with nothing masked contributes no MLM term
        total = mlm_weight * mlm + itm_weight * itm
        parts = {"mlm": float(mlm.detach()), "itm": float(itm.detach()), "masked_tokens": masked}
        return LossOutput(total, int(score.shape[0]), reduction="mean", parts=parts)

    return fn
