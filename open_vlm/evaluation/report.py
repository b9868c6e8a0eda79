"""Writing an evaluation: JSON and a readable table in the run folder, and wandb when it is enabled."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from open_vlm.config.schema import RunConfig

log = logging.getLogger(__name__)


def render_table(report: dict) -> str:
    """Per-class precision / recall / F1 / support, the averages, accuracy and the confusion matrix as text."""
    names = [row["class"] for row in report["per_class"]]
    width = max([len(n) for n in names] + [12])
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for row in report["per_class"]:
        lines.append(
            f"{row['class']:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}  {row['support']:7d}"
        )
    total = sum(row["support"] for row in report["per_class"])
    for avg in ("macro", "weighted", "micro"):
        m = report[avg]
        label = f"{avg} avg"
        lines.append(f"{label:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:5.4f}  {total:7d}")
    kind = "subset accuracy" if report["multi_label"] else "accuracy"
    lines.append(f"{kind}: {report['accuracy']:.4f} over {report['num_samples']} samples")
    if not report["multi_label"]:
        lines.append("confusion matrix (rows: true, columns: predicted):")
        cell = max([len(str(v)) for r in report["confusion_matrix"] for v in r] + [max(len(n) for n in names), 3])
        lines.append(" " * width + "  " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
        for name, row in zip(names, report["confusion_matrix"]):
            lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    else:
        lines.append("per-class confusion [[tn, fp], [fn, tp]]:")
        lines += [f"{n:<{width}}  {m}" for n, m in zip(names, report["confusion_matrix"])]
    return "\n".join(lines)


def write_report(report: dict, folder: Path, stem: str) -> dict[str, Path]:
    """`<stem>.json`, `<stem>.txt` and `<stem>.png` in `folder`; returns their paths."""
    from open_vlm.evaluation.plot import save_report_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "table": folder / f"{stem}.txt", "plot": folder / f"{stem}.png"}
    paths["json"].write_text(json.dumps(report, indent=1))
    paths["table"].write_text(render_table(report) + "\n")
    save_report_png(report, str(paths["plot"]))
    return paths


def summary_numbers(report: dict, prefix: str = "eval") -> dict[str, float]:
    """Accuracy and the macro / micro averages of a classification report, as `<prefix>/<name>` numbers."""
    return {
        f"{prefix}/accuracy": report["accuracy"],
        **{f"{prefix}/{avg}_{k}": v for avg in ("macro", "micro") for k, v in report[avg].items()},
    }


def log_wandb(cfg: RunConfig, report: dict, paths: dict[str, Path], folder: Path, prefix: str = "eval") -> str | None:
    """Log the summary numbers, a per-class table and the plot to wandb unless `logging.wandb.mode` is
    `disabled` (`offline` writes the run under `<folder>/wandb` with no network). Returns the wandb run dir."""
    settings = cfg.logging.wandb
    if settings.mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        project=settings.project or cfg.run.project,
        entity=settings.entity,
        mode=settings.mode,
        name=f"{cfg.run.name}-{prefix}",
        job_type=prefix,
        dir=str(folder),
        config={"eval": {k: v for k, v in vars(cfg.eval).items()}},
    )
    table = wandb.Table(columns=["class", "precision", "recall", "f1", "support"])
    for row in report["per_class"]:
        table.add_data(row["class"], row["precision"], row["recall"], row["f1"], row["support"])
    run.log(
        {
            **summary_numbers(report, prefix),
            f"{prefix}/per_class": table,
            f"{prefix}/plot": wandb.Image(str(paths["plot"])),
        }
    )
    run_dir = run.dir
    run.finish()
    log.info("logged to wandb (%s): %s", settings.mode, run_dir)
    return run_dir
