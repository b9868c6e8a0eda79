"""The training loop: data → forward → loss over the global batch → step → metrics → checkpoint."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from open_vlm.checkpoint.checkpointer import (
    Checkpointer,
    load_train_state,
    resolve_checkpoint,
    rng_state,
    set_rng_state,
)
from open_vlm.config.load import dump_config
from open_vlm.config.schema import RunConfig
from open_vlm.data.build import build_loader
from open_vlm.data.decode import normalize_images
from open_vlm.models.losses import next_token_loss_sum
from open_vlm.models.registry import build_model
from open_vlm.runfolder import MetricsWriter
from open_vlm.storage import local_dir
from open_vlm.tokenize.registry import build_processor
from open_vlm.tokenize.tokenizers import load_tokenizer
from open_vlm.trainer.optim import build_optimizer

log = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "pixel_values")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    samples: int
    tokens: int


class Trainer:
    """Assembles tokenizer, model, data, optimizer and checkpointer from a `RunConfig`, then trains."""

    def __init__(self, cfg: RunConfig, run_folder: Path):
        if cfg.train.strategy != "single":
            raise NotImplementedError(f"train.strategy {cfg.train.strategy} is not built yet (issue: trainer)")
        if cfg.train.precision != "fp32":
            raise NotImplementedError(f"train.precision {cfg.train.precision} is not built yet (issue: trainer)")
        self.cfg = cfg
        self.run_folder = run_folder
        self.device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
        seed_everything(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else None
        self.bundle = build_model(cfg.model, self.tokenizer)
        self.model = self.bundle.model.to(self.device)
        self.model.train()
        self.global_batch = cfg.train.global_batch_size or cfg.data.batch_size * cfg.train.accum_steps
        if cfg.data.task != "prefix_lm":
            raise NotImplementedError(
                f"data.task {cfg.data.task}: the trainer feeds prefix_lm batches only (issue: trainer)"
            )
        processor, collator = build_processor(
            cfg.data.task,
            self.tokenizer,
            num_image_tokens=self.bundle.num_image_tokens,
            max_len=cfg.data.max_text_len,
            prompt=cfg.data.prompt,
            pad_to_multiple=cfg.data.pad_to_multiple,
        )
        self.loader = build_loader(
            cfg.data,
            seed=cfg.train.seed,
            global_batch=self.global_batch,
            image_size=self.bundle.image_size,
            process=processor,
            collate=collator,
        )
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, cfg.train.max_steps)
        self.checkpointer = Checkpointer(
            cfg.checkpoint.dir or str(run_folder / "checkpoints"), cfg.checkpoint.keep_last
        )
        self.metrics = MetricsWriter(run_folder / "metrics.jsonl")
        self.step = 0
        self.samples_seen = 0
        self.tokens_seen = 0

    # --- resume ------------------------------------------------------------------------------------
    def maybe_resume(self) -> None:
        choice = self.cfg.checkpoint.resume
        ckpt = None
        if choice == "latest":
            ckpt = self.checkpointer.latest()
        elif choice != "none":
            ckpt = resolve_checkpoint(choice)
        if ckpt is None:
            log.info("starting from scratch (checkpoint.resume=%s)", choice)
            self.metrics.truncate_after(0)  # a fresh run in an old folder starts a fresh metrics file
            return
        self.load(ckpt)

    def load(self, ckpt: str) -> None:
        # transformers maps saved names to module names (and re-ties weights) in from_pretrained: use it.
        saved = type(self.model).from_pretrained(str(local_dir(ckpt) / "model"), local_files_only=True)
        self.model.load_state_dict(saved.state_dict(), strict=True)
        del saved
        train_state, data_state = load_train_state(ckpt)
        self.optimizer.load_state_dict(train_state["optimizer"])
        self.scheduler.load_state_dict(train_state["scheduler"])
        set_rng_state(train_state["rng"])
        self.loader.load_state_dict(data_state, allow_data_change=self.cfg.checkpoint.allow_data_change)
        self.step = train_state["step"]
        self.samples_seen = train_state["samples_seen"]
        self.tokens_seen = train_state["tokens_seen"]
        self.metrics.truncate_after(self.step)
        log.info("resumed from %s at step %d", ckpt, self.step)

    def save(self) -> str:
        data_state = self.loader.state_dict()
        train_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
        }
        meta = {
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "model_kind": self.bundle.kind,
            "consumed": self.loader.consumed(data_state),
            "data_sources": [  # name, catalog dataset and version of every source (see data/version.py)
                {"name": name, "dataset": source.dataset, "version": version}
                for name, source, version in zip(data_state["sources"], self.cfg.data.sources, data_state["versions"])
            ],
            "bad_samples": data_state["bad_samples"],
            "config": dump_config(self.cfg),
        }
        return self.checkpointer.save(
            self.step,
            model=self.model,
            tokenizer=self.tokenizer,
            train_state=train_state,
            data_state=data_state,
            meta=meta,
        )

    # --- training ----------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> StepResult:
        """One optimizer step over `micro_batches`; the loss is the mean over the step's supervised tokens."""
        supervised = sum(b["num_supervised"] for b in micro_batches)
        total = torch.zeros((), device=self.device)
        for batch in micro_batches:
            inputs = {k: batch[k].to(self.device, non_blocking=True) for k in MODEL_INPUTS}
            inputs["pixel_values"] = normalize_images(inputs["pixel_values"])
            logits = self.model(**inputs).logits
            loss = next_token_loss_sum(logits, batch["labels"].to(self.device)) / max(supervised, 1)
            loss.backward()
            total += loss.detach()
        clip = self.cfg.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(
            float(total),
            float(grad_norm),
            sum(len(b["input_ids"]) for b in micro_batches),
            sum(b["num_tokens"] for b in micro_batches),
        )

    def fit(self) -> None:
        cfg = self.cfg
        (self.run_folder / "config.yaml").write_text(dump_config(cfg))
        self.maybe_resume()
        every_ckpt, every_log = cfg.checkpoint.every_steps, max(1, cfg.logging.every_steps)
        batches = iter(self.loader)
        window = {"samples": 0, "tokens": 0, "data": 0.0, "start": time.perf_counter()}
        while self.step < cfg.train.max_steps:
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(self.loader.accum_steps)]
            window["data"] += time.perf_counter() - t0
            result = self.train_step(micro)
            self.step += 1
            self.samples_seen += result.samples
            self.tokens_seen += result.tokens
            window["samples"] += result.samples
            window["tokens"] += result.tokens
            if self.step % every_log == 0 or self.step == cfg.train.max_steps:
                elapsed = max(time.perf_counter() - window["start"], 1e-9)
                record = {
                    "step": self.step,
                    "loss": result.loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": result.grad_norm,
                    "samples_seen": self.samples_seen,
                    "tokens_seen": self.tokens_seen,
                    "samples_per_sec_per_device": window["samples"] / elapsed,
                    "tokens_per_sec_per_device": window["tokens"] / elapsed,
                    "data_wait_sec": window["data"],
                    "step_time_sec": elapsed,
                }
                self.metrics.write(record)
                log.info(
                    "step %d/%d loss %.4f lr %.2e grad_norm %.3f %.1f samples/s",
                    self.step,
                    cfg.train.max_steps,
                    result.loss,
                    record["lr"],
                    result.grad_norm,
                    record["samples_per_sec_per_device"],
                )
                window = {"samples": 0, "tokens": 0, "data": 0.0, "start": time.perf_counter()}
            if every_ckpt and self.step % every_ckpt == 0 and self.step < cfg.train.max_steps:
                self.save()
        self.save()
