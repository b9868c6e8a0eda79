"""Training losses by name (`train.loss`): each maps model outputs + batch to a `LossOutput`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
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


def valid_rows(batch: Mapping, n: int, device) -> torch.Tensor:
    """The batch's `valid` (B,) bool (rows the loader filled with a copy of another sample are False), else all."""
    valid = batch.get("valid")
    return torch.ones(n, dtype=torch.bool, device=device) if valid is None else valid.to(device, torch.bool)


@register_loss("next_token")
def next_token(**_) -> LossFn:
    """Causal / prefix-LM loss: summed over supervised next tokens (the prefix carries label -100)."""

    def fn(outputs, batch) -> LossOutput:
        logits = outputs["logits"]
        labels = batch["labels"].to(logits.device)
        labels = labels.masked_fill(~valid_rows(batch, labels.shape[0], labels.device)[:, None], IGNORE)
        count = int((labels[:, 1:] != IGNORE).sum())
        return LossOutput(next_token_loss_sum(logits, labels), count)

    return fn


@register_loss("clip")
def clip(rank: int = 0, world_size: int = 1, local_loss: bool = False, **_) -> LossFn:
    """CLIP's softmax loss over the gathered batch (features gathered with their gradients), invalid pairs out."""
    from open_vlm.models.contrastive_losses import SoftmaxContrastiveLoss

    return _contrastive(SoftmaxContrastiveLoss(rank, world_size, local_loss), use_bias=False)


@register_loss("siglip")
def siglip(rank: int = 0, world_size: int = 1, dist_impl: str | None = None, **_) -> LossFn:
    """SigLIP's pairwise sigmoid loss (open_clip's neighbour exchange across ranks), invalid pairs out."""
    from open_vlm.models.contrastive_losses import SigmoidContrastiveLoss

    return _contrastive(SigmoidContrastiveLoss(rank, world_size, dist_impl), use_bias=True)


def _contrastive(loss, use_bias: bool) -> LossFn:
    def fn(outputs, batch) -> LossOutput:
        image = outputs["image_features"]
        valid = valid_rows(batch, image.shape[0], image.device)
        bias = outputs["logit_bias"] if use_bias else None
        value = loss(image, outputs["text_features"], outputs["logit_scale"], valid, bias)
        return LossOutput(value, int(valid.sum()), reduction="mean")

    return fn


@register_loss("lxmert")
def lxmert(mlm_weight: float = 1.0, itm_weight: float = 1.0, qa_weight: float = 1.0, **_) -> LossFn:
    """LXMERT pretraining: masked-LM (`labels`, -100 where unmasked) + image-text matching (`matched_label` 0/1)
    + question answering when the batch has `answer_label` (answer index, -100: none) and the model a QA head.

    Each term is a mean over what it supervises (masked tokens, valid rows); an empty term is 0, never NaN."""

    def fn(outputs, batch) -> LossOutput:
        logits = outputs["prediction_logits"]
        score = outputs["cross_relationship_score"].float()
        valid = valid_rows(batch, score.shape[0], score.device)
        labels = batch["labels"].to(logits.device).masked_fill(~valid[:, None], IGNORE)
        matched = batch["matched_label"].to(score.device).flatten().masked_fill(~valid, IGNORE)
        masked, pairs = int((labels != IGNORE).sum()), int((matched != IGNORE).sum())
        mlm = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        itm = F.cross_entropy(score, matched, ignore_index=IGNORE, reduction="sum")
        mlm, itm = mlm / max(masked, 1), itm / max(pairs, 1)
        total = mlm_weight * mlm + itm_weight * itm
        parts = {"mlm": float(mlm.detach()), "itm": float(itm.detach()), "masked_tokens": masked}
        if "question_answering_score" in outputs and "answer_label" in batch:
            answers = outputs["question_answering_score"].float()
            wanted = batch["answer_label"].to(answers.device).flatten().masked_fill(~valid, IGNORE)
            qa = F.cross_entropy(answers, wanted, ignore_index=IGNORE, reduction="sum")
            qa = qa / max(int((wanted != IGNORE).sum()), 1)
            total = total + qa_weight * qa
            parts["qa"] = float(qa.detach())
        return LossOutput(total, pairs, reduction="mean", parts=parts)

    return fn
