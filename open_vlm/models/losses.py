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
    `"terms"`: a sum of means with different denominators (LXMERT): `terms` maps each count the loss function's
    `counts(batch)` names to the (weighted) loss sum over what it counts; the trainer divides each by that count
    summed over micro-batches and ranks (exact), and `loss` is the same over this call's batch of all ranks.
    """

    loss: torch.Tensor
    count: int
    reduction: str = "sum"
    parts: dict[str, float] = field(default_factory=dict)  # named components, for logging
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # reduction "terms": count name → loss sum


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


def term_counts(loss_fn: LossFn, batches: list[Mapping]) -> tuple[list[str], list[int]]:
    """The names of a "terms"-reduced loss's counts and their sums over `batches` (none for other losses)."""
    counts = getattr(loss_fn, "counts", None)  # only losses with several denominators define it
    if counts is None:
        return [], []
    per_batch = [counts(b) for b in batches]
    names = list(per_batch[0])
    return names, [sum(c[name] for c in per_batch) for name in names]


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
def lxmert(
    mlm_weight: float = 1.0, itm_weight: float = 1.0, qa_weight: float = 1.0, world_size: int = 1, **_
) -> LossFn:
    """LXMERT pretraining: masked-LM (`labels`, -100 where unmasked) + image-text matching (`matched_label` 0/1)
    + question answering when the batch has `answer_label` (answer index, -100: none) and the model a QA head.

    Each term is a mean over what it supervises (masked tokens, valid pairs, answers) of all ranks (and, in the
    trainer, of all micro-batches of a step): invalid rows anywhere change nothing. An empty term is 0, never NaN."""
    return LxmertLoss({"masked": mlm_weight, "pairs": itm_weight, "answers": qa_weight}, world_size)


class LxmertLoss:
    """The `lxmert` loss (above); `counts(batch)` gives its denominators, which the trainer sums globally."""

    def __init__(self, weights: dict[str, float], world_size: int = 1):
        self.weights, self.world_size = weights, world_size

    @staticmethod
    def targets(batch: Mapping) -> dict[str, torch.Tensor]:
        """The labels of each term (count name → labels, IGNORE on invalid rows and where nothing is supervised)."""
        matched = batch["matched_label"].flatten()
        valid = valid_rows(batch, matched.shape[0], matched.device)
        out = {
            "masked": batch["labels"].masked_fill(~valid.to(batch["labels"].device)[:, None], IGNORE),
            "pairs": matched.masked_fill(~valid, IGNORE),
        }
        if "answer_label" in batch:
            answers = batch["answer_label"].flatten()
            out["answers"] = answers.masked_fill(~valid.to(answers.device), IGNORE)
        return out

    def counts(self, batch: Mapping) -> dict[str, int]:
        """What each term supervises in `batch` (masked tokens, valid pairs, answers): the same names on every rank."""
        targets = self.targets(batch)
        return {name: int((targets[name] != IGNORE).sum()) if name in targets else 0 for name in self.weights}

    def __call__(self, outputs, batch) -> LossOutput:
        logits = outputs["prediction_logits"]
        score = outputs["cross_relationship_score"].float()
        targets = {name: labels.to(score.device) for name, labels in self.targets(batch).items()}
        scores = {"masked": logits.flatten(0, 1).float(), "pairs": score}
        if "question_answering_score" in outputs and "answers" in targets:
            scores["answers"] = outputs["question_answering_score"].float()
        sums = {
            name: F.cross_entropy(x, targets[name].flatten(), ignore_index=IGNORE, reduction="sum")
            for name, x in scores.items()
        }
        local = self.counts(batch)
        counts = dict(zip(local, _sum_over_ranks(list(local.values()), score.device, self.world_size)))
        terms = {name: self.weights[name] * value for name, value in sums.items()}
        # W x (this rank's share of each mean over all ranks): DDP/FSDP's gradient averaging gives the global mean
        total = sum(self.world_size * term / max(counts[name], 1.0) for name, term in terms.items())
        parts = {PART_NAMES[n]: float(v.detach()) / max(local[n], 1.0) for n, v in sums.items()}  # this rank's
        parts["masked_tokens"] = int(local["masked"])
        return LossOutput(total, int(local["pairs"]), reduction="terms", parts=parts, terms=terms)


PART_NAMES = {"masked": "mlm", "pairs": "itm", "answers": "qa"}  # how each LXMERT term is logged


def _sum_over_ranks(values: list[float], device, world_size: int) -> list[float]:
    """Sum numbers over the ranks (one collective; no-op for one)."""
    if world_size == 1:
        return values
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
