"""Held-out evaluation: loss and perplexity on shards the run does not train on; retrieval for contrastive.

The held-out order is the loader's, seeded by the run seed, so every evaluation sees the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

import torch

from open_vlm.config.schema import RunConfig
from open_vlm.data.build import batch_to_device, build_model_loader
from open_vlm.evaluation.vqa import vqa_evaluator
from open_vlm.models.losses import build_loss

log = logging.getLogger(__name__)


def recall_at_k(image: torch.Tensor, text: torch.Tensor, ks=(1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image recall@k for paired, L2-normalised features (row i matches row i)."""
    sims = image @ text.T
    target = torch.arange(len(sims))
    out = {}
    for name, matrix in (("image_to_text", sims), ("text_to_image", sims.T)):
        ranks = (matrix > matrix[target, target][:, None]).sum(dim=1)  # how many beat the true pair
        for k in ks:
            out[f"{name}_r@{k}"] = float((ranks < k).float().mean())
    return out


class HeldOutEvaluator:
    """Mean loss (and perplexity for next-token losses) over `eval.max_batches` held-out global batches."""

    def __init__(self, cfg: RunConfig, bundle, tokenizer, rank: int = 0, world: int = 1):
        self.cfg, self.bundle = cfg, bundle
        sources = cfg.eval.sources or cfg.data.sources
        if not sources:
            raise ValueError("eval.sources (or data.sources) is empty: nothing to evaluate on")
        data = dataclasses.replace(cfg.data, sources=sources, num_workers=min(cfg.data.num_workers, 1))
        self.global_batch = data.batch_size * world
        self.loader = build_model_loader(
            data,
            seed=cfg.train.seed,
            global_batch=self.global_batch,
            bundle=bundle,
            tokenizer=tokenizer,
            rank=rank,
            world=world,
            augment=False,  # held-out samples are scored as they are
        )
        self.start = self.loader.local_state_dict()  # every evaluation replays the same batches
        self.loss_fn = build_loss(cfg.train.loss, rank=rank, world_size=world)
        self.num_batches = cfg.eval.max_batches or max(1, self.loader_samples() // self.global_batch)
        self.vqa = vqa_evaluator(cfg, bundle, tokenizer, sources, rank, world)  # None: no VQA source

    def loader_samples(self) -> int:
        return min(src.manifest.num_samples for src in self.loader.sources)

    @torch.no_grad()
    def evaluate(
        self, model: torch.nn.Module, device: torch.device, all_reduce=lambda x: x, autocast=contextlib.nullcontext
    ) -> dict[str, float]:
        """Evaluate `model` (wrapped or not); `all_reduce` sums a number over ranks.

        `autocast`: the training strategy's context, so that evaluation runs in the training precision under
        every strategy (FSDP's mixed precision casts the parameters whatever the mode).
        """
        was_training = model.training
        model.eval()
        total = count = 0.0
        features: dict[str, list[torch.Tensor]] = {"image": [], "text": []}
        self.loader.load_state_dict(self.start)
        batches = iter(self.loader)
        for _ in range(self.num_batches):
            batch = batch_to_device(next(batches), device)
            with autocast():
                outputs = self.bundle.forward(model, batch)
                out = self.loss_fn(outputs, batch)
            weight = out.count if out.reduction == "sum" else 1
            total += float(out.loss) if out.reduction == "sum" else float(out.loss)
            count += weight
            if "image_features" in outputs:
                features["image"].append(torch.nn.functional.normalize(outputs["image_features"].float(), dim=-1))
                features["text"].append(torch.nn.functional.normalize(outputs["text_features"].float(), dim=-1))
        vqa = self.vqa.evaluate(model, device, all_reduce) if self.vqa is not None else {}
        if was_training:
            model.train()
        total, count = all_reduce(total), all_reduce(count)
        loss = total / max(count, 1.0)
        result = {"eval_loss": loss}
        if self.cfg.train.loss == "next_token":
            result["eval_perplexity"] = math.exp(min(loss, 50.0))
        if features["image"]:
            result.update(recall_at_k(torch.cat(features["image"]), torch.cat(features["text"])))
        result.update(vqa)
        return result
