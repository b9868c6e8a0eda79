"""`open-vlm eval --config X.yaml [--kind KIND]`: evaluation kinds in a registry (`eval.kind`).

A kind is `fn(cfg, run_folder) -> summary dict`; `classification` is built in. Another kind (held-out loss /
perplexity) registers itself with `@register_eval_kind("loss")` and is listed in `_import_kinds`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from open_vlm.config.load import ConfigError, dump_config, ignored_keys, load_run_config
from open_vlm.config.schema import RunConfig, data_task
from open_vlm.config.validate import check_inputs
from open_vlm.data.catalog import sources_at_split
from open_vlm.names import did_you_mean
from open_vlm.runfolder import run_dir, setup_logging
from open_vlm.tracking import preflight_trackers

log = logging.getLogger("open_vlm.eval")

EvalKind = Callable[[RunConfig, Path], dict]
_KINDS: dict[str, EvalKind] = {}


def register_eval_kind(name: str) -> Callable[[EvalKind], EvalKind]:
    def add(fn: EvalKind) -> EvalKind:
        _KINDS[name] = fn
        return fn

    return add


def eval_kinds() -> list[str]:
    return sorted(_KINDS)


@register_eval_kind("classification")
def run_classification(cfg: RunConfig, folder: Path) -> dict:
    """Predict, score (metrics.py), write `eval-<task>.{json,txt,png}` in the run folder, log to wandb."""
    import torch

    from open_vlm.evaluation.classify import decide, predict
    from open_vlm.evaluation.metrics import multi_label_report, single_label_report
    from open_vlm.evaluation.report import log_wandb, render_table, summary_numbers, write_report
    from open_vlm.tracking.evaluation import evaluated_step, log_evaluation

    options = cfg.eval
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.train.seed)  # a model built from model.config alone is then the same every time
    preds = predict(cfg, device)
    if not preds.keys:
        raise ValueError(f"no labelled samples to evaluate (skipped: {dict(preds.skipped)})")
    scores = np.stack(preds.scores)
    predicted = decide(scores, options.multi_label, options.threshold)
    if options.multi_label:
        report = multi_label_report(np.stack(preds.labels), predicted, options.class_names)
    else:
        report = single_label_report(np.array(preds.labels), predicted, options.class_names)
    report.update(kind="classification", task=options.task, skipped=dict(preds.skipped))
    paths = write_report(report, folder, f"eval-{options.task}")
    wandb_dir = log_wandb(cfg, report, paths, folder)
    log_evaluation(
        cfg,
        folder,
        summary_numbers(report),
        images={f"eval/{options.task}": paths["plot"]},
        files=[paths["json"], paths["table"]],
        step=evaluated_step(cfg.eval.checkpoint),
    )
    return {
        "report": report,
        "paths": {k: str(v) for k, v in paths.items()},
        "wandb": wandb_dir,
        "table": render_table(report),
    }


@register_eval_kind("loss")
def run_heldout(cfg: RunConfig, folder: Path) -> dict:
    """Held-out loss / perplexity (retrieval R@k for contrastive models) of `eval.checkpoint`."""
    import json

    import torch

    from open_vlm.checkpoint.model_io import load_model_from_checkpoint
    from open_vlm.evaluation.heldout import HeldOutEvaluator
    from open_vlm.tracking.evaluation import evaluated_step, log_evaluation

    if not cfg.eval.checkpoint:
        raise ValueError("eval.kind loss needs a checkpoint: --checkpoint PATH (a checkpoint or run folder)")
    bundle, tokenizer, trained = load_model_from_checkpoint(cfg.eval.checkpoint, module=cfg.model.module)
    # Tokenization and loss as in training; the shards and batch count as this invocation says.
    trained.eval.sources = cfg.eval.sources or cfg.data.sources or trained.eval.sources
    trained.eval.max_batches = cfg.eval.max_batches
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    result = HeldOutEvaluator(trained, bundle, tokenizer).evaluate(bundle.model.to(device), device)
    report = {"kind": "loss", "checkpoint": cfg.eval.checkpoint, **result}
    path = folder / "eval-loss.json"
    path.write_text(json.dumps(report, indent=1))
    log_evaluation(cfg, folder, result, files=[path], step=evaluated_step(cfg.eval.checkpoint))
    table = "\n".join(f"{k:24s} {v:.6g}" for k, v in result.items())
    return {"report": report, "paths": {"json": str(path)}, "table": table}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--kind" in argv:  # shorthand for --eval.kind
        argv[argv.index("--kind")] = "--eval.kind"
    if "--split" in argv:  # shorthand for --eval.split
        argv[argv.index("--split")] = "--eval.split"
    if "--checkpoint" in argv:  # shorthand for --eval.checkpoint; without a kind it means held-out loss
        argv[argv.index("--checkpoint")] = "--eval.checkpoint"
        if "--eval.kind" not in argv:
            argv += ["--eval.kind", "loss"]
    try:
        cfg = load_run_config(argv)
        if cfg.eval.split:  # the sources it reads, at that split of their catalog datasets
            held_out = cfg.eval.sources or cfg.data.sources
            cfg.eval.sources = sources_at_split(held_out, cfg.eval.split, cfg.data, data_task(cfg))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    kind = cfg.eval.kind
    if kind not in _KINDS:
        hint = did_you_mean(kind, eval_kinds())
        print(f"error: eval.kind: unknown kind '{kind}'{hint} (known: {eval_kinds()})", file=sys.stderr)
        return 2
    check_inputs(cfg, "eval")
    preflight_trackers(cfg.logging)  # before the evaluation, which the trackers would otherwise hold up at its end
    folder = run_dir(cfg.run.output_dir, cfg.run.project, cfg.run.name)
    setup_logging(folder, cfg.run.project, "eval", cfg.logging.level)
    ignored = ignored_keys(argv, "eval")
    if ignored:
        log.warning("eval ignores these config keys: %s", ", ".join(ignored))
    (folder / "config.yaml").write_text(dump_config(cfg))
    try:
        summary = _KINDS[kind](cfg, folder)
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2
    if "table" in summary:
        print(summary["table"])
    for name, path in summary.get("paths", {}).items():
        print(f"{name}: {path}")
    return 0
