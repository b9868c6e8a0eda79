"""The training loop: data → forward → loss over the global batch → step → metrics → checkpoint.

`Trainer` assembles the components from a `RunConfig` (model bundle, strategy, loader, optimizer, loss,
checkpointer, metrics) and `fit()` runs the steps. Distribution lives in the strategy, persistence in the
checkpointer, the sample order in the loader.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

import torch

from open_vlm.checkpoint.checkpointer import CheckpointDamaged, Checkpointer, read_meta, resolve_checkpoint
from open_vlm.checkpoint.collective import CheckpointComm, new_checkpoint_group
from open_vlm.checkpoint.dcp_io import WeightsMismatch, load_model_weights, weights_report
from open_vlm.checkpoint.model_io import described_model_config, model_files, saved_model_config
from open_vlm.checkpoint.resume import ResumeRefused, check_init_from, check_resumable
from open_vlm.checkpoint.rng import rng_state, seed_everything, set_rng_state
from open_vlm.config.load import dump_config
from open_vlm.config.schema import RunConfig
from open_vlm.data.build import batch_to_device, build_model_loader
from open_vlm.data.version import DataVersionError
from open_vlm.lifeline import launched_by_torchrun
from open_vlm.models.freeze import check_frozen_dtype
from open_vlm.models.losses import build_loss, term_counts
from open_vlm.models.registry import build_model
from open_vlm.tokenize.tokenizers import load_tokenizer
from open_vlm.tracking import preflight_trackers
from open_vlm.tracking.base import data_inputs
from open_vlm.trainer.epochs import log_epoch_steps, steps_for_epochs
from open_vlm.trainer.metrics import MetricsLogger, ThroughputWindow, peak_memory_gb
from open_vlm.trainer.mfu import FlopCounter, device_peak_flops
from open_vlm.trainer.optim import (
    build_optimizer,
    follow_schedule,
    group_hyperparameters,
    restore_hyperparameters,
)
from open_vlm.trainer.parallel import (
    all_reduce_sum,
    all_reduce_sums,
    apply_activation_checkpointing,
    build_strategy,
    init_distributed,
)
from open_vlm.trainer.signals import StopRequest, stop_grace

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepResult:
    loss: float  # this rank's share of the mean over the global batch (summed over ranks in `fit`)
    grad_norm: float
    lr: float  # the learning rate this step used (first parameter group)
    samples: int  # this rank's samples
    tokens: int  # this rank's real tokens
    skipped: bool = False  # fp16 overflow: the optimizer step was skipped
    flops: float = 0.0  # this rank's model training FLOPs (trainer/mfu.py)


class Trainer:
    """Everything one training run needs, built from its config."""

    def __init__(self, cfg: RunConfig, run_folder: Path):
        self.cfg, self.run_folder = cfg, run_folder
        self.info = init_distributed(cfg.train.device)
        # A tracker that cannot start says so now, not after the model is built; rank 0 checks, every rank stops.
        CheckpointComm().from_rank0(lambda: preflight_trackers(cfg.logging))
        # The checkpointer's own gloo group (made here, by every rank, once): see checkpoint/collective.py.
        checkpoint_group = new_checkpoint_group()
        self.strategy = build_strategy(cfg.train, self.info)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        seed_everything(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else None
        check_frozen_dtype(cfg.model.frozen_dtype, cfg.train.precision)
        # What checkpoints describe the model with, read once: the files may be edited while the run goes on.
        self.model_files = model_files(cfg, self.tokenizer)
        self.bundle = build_model(cfg.model, self.tokenizer)
        units = self.bundle.shard_units
        if cfg.train.activation_checkpointing:
            units = apply_activation_checkpointing(self.bundle.model, units)
        self.model = self.strategy.wrap(self.bundle.model, units)
        self.flops = FlopCounter(self.bundle.model)  # the wrapped modules: FSDP2's DTensors count their full size
        self.peak_flops = device_peak_flops(self.info.device)  # None off CUDA: no MFU logged
        if cfg.train.compile:
            self.model = torch.compile(self.model)
        self.model.train()
        world = self.info.world
        self.global_batch = cfg.train.global_batch_size or cfg.data.batch_size * world * cfg.train.accum_steps
        self.loader = self._build_loader()
        if cfg.train.epochs:  # the step count follows from the data: resolved once, before the schedule needs it
            cfg = self.cfg = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, max_steps=self._epoch_steps())
            )
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg.optim, cfg.train.max_steps, self.bundle.groups)
        self.configured = group_hyperparameters(self.optimizer)  # this run's, kept: a resume's loads replace them
        self.scaler = self.strategy.grad_scaler()
        self.loss_fn = build_loss(cfg.train.loss, rank=self.info.rank, world_size=world)
        self.checkpointer = Checkpointer(
            cfg.checkpoint.dir or str(run_folder / "checkpoints"),
            cfg.checkpoint.keep_last,
            group=checkpoint_group,
            checksums=cfg.checkpoint.checksums,
        )
        self.metrics = MetricsLogger(cfg, run_folder, enabled=self.info.is_main, device=self.info.device)
        self.evaluator = None
        if cfg.eval.every_steps:
            from open_vlm.evaluation.heldout import HeldOutEvaluator

            self.evaluator = HeldOutEvaluator(cfg, self.bundle, self.tokenizer, self.info.rank, self.info.world)
        self.step = self.samples_seen = self.tokens_seen = 0

    def _build_loader(self):
        loader = build_model_loader(
            self.cfg.data,
            seed=self.cfg.train.seed,
            global_batch=self.global_batch,
            bundle=self.bundle,
            tokenizer=self.tokenizer,
            rank=self.info.rank,
            world=self.info.world,
        )
        loader.settings.pin_memory = self.info.device.type == "cuda"  # so batch_to_device's copies overlap
        return loader

    def _epoch_steps(self) -> int:
        s = self.loader.settings
        counts = [src.manifest.num_samples for src in self.loader.sources]
        weights = [src.weight for src in self.loader.sources]
        plan = steps_for_epochs(counts, weights, self.cfg.train.epochs, s.global_batch, s.group, s.seed)
        log_epoch_steps(self.cfg.train.epochs, plan, [src.name for src in self.loader.sources])
        return plan.steps

    def _data_inputs(self) -> list:
        """Every source this run reads, for the trackers (catalog name, split, version)."""
        inputs = data_inputs(self.cfg.data.sources, self.loader)
        if self.evaluator is not None:
            held_out = self.cfg.eval.sources or self.cfg.data.sources
            inputs += data_inputs(held_out, self.evaluator.loader, context="evaluation")
        return inputs

    # --- state -------------------------------------------------------------------------------------
    def resume_or_init(self) -> None:
        ck = self.cfg.checkpoint
        ckpt = None
        if ck.resume == "latest":
            ckpt = self._load_latest_good(ck.fallback)
        elif ck.resume != "none":
            ckpt = self._resolve("resume", ck.resume)
            self.checkpointer.check(ckpt)
            self.load(ckpt)
        if ckpt is None:
            if ck.init_from:
                self._init_from(self._resolve("init_from", ck.init_from))
            log.info("starting at step 0 (checkpoint.resume=%s)", ck.resume)
            self.metrics.writer.truncate_after(0)  # a fresh run in an old folder starts a fresh metrics file
        # Saves from here on must not meet checkpoints of another timeline (a rollback, a fresh start).
        self.checkpointer.comm.from_rank0(lambda: self.checkpointer.set_aside_newer(self.step, resumed=ckpt))

    def _load_latest_good(self, fallback: bool) -> str | None:
        """Load the newest checkpoint whose files match its marker (see checkpoint/verify.py) and that loads: with
        `fallback`, one that fails to load (bytes changed at the same size) is passed over like a damaged one. A
        partial load is harmless: the next one loaded replaces every tensor and state it touched."""
        known: dict[str, list[str]] = {}  # damaged checkpoints found so far: checked and reported once
        while True:
            ckpt = self.checkpointer.latest_good(fallback=fallback, known=known)
            if ckpt is None:
                return None
            try:
                self.load(ckpt)
                return ckpt
            except CheckpointDamaged as err:
                if not fallback:
                    raise
                known[ckpt] = [getattr(err, "reason", str(err))]

    def _resolve(self, key: str, path: str) -> str:
        """The checkpoint `checkpoint.<key>` names, found by rank 0 so that every rank gets the same one."""
        try:
            return self.checkpointer.comm.from_rank0(lambda: resolve_checkpoint(path))
        except FileNotFoundError as err:
            raise ResumeRefused(f"checkpoint.{key}: {err}") from None

    def _init_from(self, source: str) -> None:
        report = weights_report(source, self.model)
        check_init_from(read_meta(source), report, self.cfg, source)
        load_model_weights(source, self.model, group=self.checkpointer.group)
        log.info(
            "initialised %d tensors from %s; missing %s; unexpected %s",
            report.loaded,
            source,
            report.missing or "none",
            report.unexpected or "none",
        )

    def load(self, ckpt: str) -> None:
        ck = self.cfg.checkpoint
        changed = check_resumable(
            read_meta(ckpt),
            self.cfg,
            allow=ck.allow_config_change,
            saved_model=saved_model_config(ckpt),
            model=described_model_config(self.model_files),
        )
        try:
            extra, rng, data_state = self.checkpointer.load(ckpt, self.model, self.optimizer)
        except WeightsMismatch as err:  # no flag resumes another architecture; init_from starts from its weights
            raise ResumeRefused(
                f"checkpoint.resume: {err} (to start this model from its weights, use checkpoint.resume none with "
                "checkpoint.init_from and checkpoint.allow_partial_init true)"
            ) from None
        self.scheduler.load_state_dict(extra["scheduler"])
        if any(key.startswith("optim.") for key in changed):  # allowed: the new optimizer settings apply
            restore_hyperparameters(self.optimizer, self.scheduler, self.configured)
        else:
            follow_schedule(self.optimizer, self.scheduler)  # this run's schedule (max_steps may have grown)
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.step, self.samples_seen, self.tokens_seen = extra["step"], extra["samples_seen"], extra["tokens_seen"]
        if ck.reset_data:
            log.info("checkpoint.reset_data: keeping weights and optimizer, restarting the data order")
        else:
            try:
                self.loader.load_state_dict(data_state, allow_data_change=ck.allow_data_change)
            except DataVersionError:
                raise
            except ValueError as err:  # an incompatible data state (another format, order settings)
                if not ck.allow_config_change:
                    raise ResumeRefused(f"cannot continue the data order of {ckpt}: {err}") from None
                log.warning("data order restarts: %s (checkpoint.allow_config_change)", err)
        if rng is not None and data_state.get("world") == self.info.world:
            set_rng_state(rng)
        else:  # another world size: per-rank streams cannot carry over; derive them from the step
            seed_everything(self.cfg.train.seed + 1_000_003 * self.step + self.info.rank)
        self.checkpointer.protected = ckpt
        self.metrics.writer.truncate_after(self.step)
        log.info("resumed from %s at step %d", ckpt, self.step)

    def save(self, final: bool = False) -> str:
        """Checkpoint the current step (collective). The final one (end, stop signal) is written synchronously."""
        data_state = self.loader.state_dict()  # collective
        extra = {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
        }
        meta = {
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            "model_kind": self.bundle.kind,
            "world": self.info.world,
            "strategy": self.strategy.name,
            "consumed": self.loader.consumed(data_state),
            "data_sources": [  # name, catalog dataset and version of every source (see data/version.py)
                {"name": name, "dataset": source.dataset, "version": version}
                for name, source, version in zip(data_state["sources"], self.cfg.data.sources, data_state["versions"])
            ],
            "bad_samples": data_state["bad_samples"],
            "config": dump_config(self.cfg),
        }
        url = self.checkpointer.save(
            self.step,
            model=self.model,
            optimizer=self.optimizer,
            extra=extra,
            rng=rng_state(),
            data_state=data_state,
            meta=meta,
            files=self.model_files if self.info.is_main else {},
            async_save=self.cfg.checkpoint.async_save and not final,
        )
        self.metrics.checkpoint_saved(url)
        return url

    # --- one step ----------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> StepResult:
        """One optimizer step; sum-reduced losses are divided by the global count (exact under accumulation)."""
        strategy, scaler = self.strategy, self.scaler
        accum = len(micro_batches)
        # Denominators of the step, summed over micro-batches and ranks in one collective: the supervised tokens
        # of sum-reduced losses, and the counts of each term of "terms"-reduced ones (`LossOutput`).
        names, local = term_counts(self.loss_fn, micro_batches)
        normalizer, *counts = all_reduce_sums(
            [sum(b["num_supervised"] for b in micro_batches), *local], self.info.device
        )
        term_totals = dict(zip(names, counts))
        total = torch.zeros((), device=self.info.device, dtype=torch.float64)
        for i, batch in enumerate(micro_batches):
            batch = batch_to_device(batch, self.info.device)
            with strategy.sync_context(self.model, sync=i == accum - 1), strategy.autocast():
                out = self.loss_fn(self.bundle.forward(self.model, batch), batch)
            if out.reduction == "sum":
                loss = out.loss * strategy.grad_divisor / max(normalizer, 1.0)
                total += out.loss.detach().double() / max(normalizer, 1.0)
            elif out.reduction == "terms":
                share = sum(term / max(term_totals[name], 1.0) for name, term in out.terms.items())
                loss = share * strategy.grad_divisor
                total += share.detach().double()
            else:
                loss = out.loss / accum
                total += out.loss.detach().double() / accum / self.info.world
            (scaler.scale(loss) if scaler is not None else loss).backward()
        scale_before = scaler.get_scale() if scaler is not None else None
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        grad_norm = strategy.clip_grad_norm(self.model, self.cfg.optim.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.checkpointer.staged()  # an async save's copy overlapped forward and backward; the update may start
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        skipped = scaler is not None and scaler.get_scale() < scale_before
        return StepResult(
            loss=float(total),
            grad_norm=grad_norm,
            lr=lr,
            samples=sum(len(b["__meta__"]) for b in micro_batches),  # rows processed (a bad sample's copy too)
            tokens=sum(b["num_tokens"] for b in micro_batches),
            skipped=skipped,
            flops=sum(self.flops.batch_flops(b) for b in micro_batches),
        )

    # --- the loop ----------------------------------------------------------------------------------
    def fit(self, stop: StopRequest | None = None) -> str:
        """Train to `train.max_steps` (or until a stop signal); returns why it stopped.

        `stop`: the handler the entry point installed at process start; a signal that came while starting (model
        build, checkpoint load) ends the run before its first step: nothing trained, nothing to save."""
        cfg = self.cfg
        if self.info.is_main:
            self.run_folder.mkdir(parents=True, exist_ok=True)
            (self.run_folder / "config.yaml").write_text(dump_config(cfg))
        own_stop = stop is None
        stop = StopRequest().install() if own_stop else stop
        every_ckpt, every_log = cfg.checkpoint.every_steps, max(1, cfg.logging.every_steps)
        reason = "max_steps"
        try:
            if self._stopped_while_starting(stop):  # before loading a checkpoint for nothing
                return self._unstarted(stop)
            self.resume_or_init()
            if self._stopped_while_starting(stop):
                return self._unstarted(stop)
            self.metrics.start(self.step, self._data_inputs() if self.info.is_main else [])
            batches = iter(self.loader)
            window, last_save = ThroughputWindow(), time.monotonic()
            while self.step < cfg.train.max_steps:
                t0 = time.perf_counter()
                micro = [next(batches) for _ in range(self.loader.accum_steps)]
                window.data_wait += time.perf_counter() - t0
                result = self.train_step(micro)
                self.step += 1
                # One collective per step for the numbers and the decisions every rank must share: the loss,
                # the counts, any rank's stop signal, and rank 0's clock for timed saves.
                minutes = cfg.checkpoint.every_minutes
                due_time = self.info.is_main and minutes > 0 and time.monotonic() - last_save > 60 * minutes
                result.loss, samples, tokens, flops, stops, due, bad = all_reduce_sums(
                    [
                        result.loss,
                        result.samples,
                        result.tokens,
                        result.flops,
                        float(stop.requested),
                        float(due_time),
                        sum(self.loader.bad_samples.values()),  # rank 0 carries the count restored at resume
                    ],
                    self.info.device,
                )
                self.samples_seen += int(samples)
                self.tokens_seen += int(tokens)
                window.add_step(samples, tokens, flops)
                self.metrics.step(self.step)
                with window.excluded():  # throughput counts training, not evaluation
                    evaluated = {} if stops else self._maybe_evaluate()
                if evaluated or self.step % every_log == 0 or self.step == cfg.train.max_steps:
                    record = {
                        **self._record(result, window.record(self.info.world, self.peak_flops)),
                        "bad_samples": int(bad),
                    }
                    self.metrics.log({**record, **evaluated})
                    window.reset()
                if stops > 0:
                    reason = stop.reason or "signal"
                    break
                due_steps = every_ckpt and self.step % every_ckpt == 0
                if (due_steps or due > 0) and self.step < cfg.train.max_steps:
                    with window.excluded():  # nor saving
                        self.save()
                    last_save = time.monotonic()
            self.save(final=True)
            self.checkpointer.wait()
            if stop.at is not None:
                self._report_stop_time(stop)
        finally:
            if own_stop:
                stop.uninstall()
            self.metrics.close(failed=sys.exc_info()[0] is not None)
        return reason

    def _stopped_while_starting(self, stop: StopRequest) -> bool:
        """Whether any rank got a stop signal before the first step (one collective: every rank decides alike)."""
        return all_reduce_sum(float(stop.requested), self.info.device) > 0

    def _unstarted(self, stop: StopRequest) -> str:
        reason = stop.reason or "signal"
        log.warning("%s while starting: stopping before the first step (nothing new to save)", reason)
        return reason

    def _report_stop_time(self, stop: StopRequest) -> None:
        took = time.monotonic() - stop.at
        log.info("checkpoint committed %.1fs after %s", took, stop.reason)
        grace, fix = stop_grace(self.cfg.train.shutdown_timeout, launched_by_torchrun())
        if took > 0.8 * grace:
            log.warning("stopping took %.0fs of the %.0fs grace before SIGKILL: %s", took, grace, fix)

    def _maybe_evaluate(self) -> dict:
        every = self.cfg.eval.every_steps
        if self.evaluator is None or self.step % every:
            return {}
        device = self.info.device
        return self.evaluator.evaluate(
            self.model, device, all_reduce=lambda v: all_reduce_sum(v, device), autocast=self.strategy.autocast
        )

    def _record(self, result: StepResult, rates: dict) -> dict:
        return {
            "step": self.step,
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "samples_seen": self.samples_seen,
            "tokens_seen": self.tokens_seen,
            **rates,
            "peak_memory_gb": peak_memory_gb(self.info.device),
            "skipped_step": result.skipped,
        }
