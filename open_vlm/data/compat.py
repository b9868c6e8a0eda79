"""Which sources fit their data task (`data.sources[i].task`, else `data.task`, else the model's): by modality
(what the decoder yields) and by what a dataset is for; and which sources can share a batch."""

from __future__ import annotations

from open_vlm.config.schema import CHOICES

DATA_TASKS: tuple[str, ...] = tuple(t for t in CHOICES["data.task"] if t)  # "" means the model's own

# Catalog tasks (what a dataset is meant for) -> the data tasks (processors) that can train on it.
# Image-caption pairs are also what contrastive (CLIP/SigLIP) training consumes.
DATASET_TASKS: dict[str, tuple[str, ...]] = {
    "captioning": ("prefix_lm", "chat_lm", "contrastive"),
    "vqa": ("prefix_lm", "chat_lm"),
    "chat": ("chat_lm",),
    "contrastive": ("contrastive",),
    # Text under prefix_lm / chat_lm is a document too (no image tokens, the whole text the target).
    "text_lm": ("causal_lm", "prefix_lm", "chat_lm"),
    "region_pretraining": ("lxmert",),
    # A data task's own name is accepted too and means exactly that task.
    **{task: (task,) for task in DATA_TASKS},
}

# Modalities (open_vlm/data/decode.py) -> the data tasks whose processor reads what that decoder yields.
# Text-only samples feed the VLM processors without image tokens (a VLM run's text sources).
# Pre-tokenized shards were written for some task the shards do not name: any task may read them.
MODALITY_TASKS: dict[str, tuple[str, ...]] = {
    "image_text": ("prefix_lm", "chat_lm", "contrastive"),
    "text": ("causal_lm", "prefix_lm", "chat_lm"),
    "region_features": ("lxmert",),
    "pretokenized": DATA_TASKS,
}


def unknown_names(modality: str, tasks: list[str]) -> str | None:
    """What is not a known modality or catalog task, or None."""
    if modality not in MODALITY_TASKS:
        return f"unknown modality {modality!r} (known: {', '.join(MODALITY_TASKS)})"
    unknown = [t for t in tasks if t not in DATASET_TASKS]
    if unknown:
        return f"unknown task(s) {unknown} (known: {', '.join(DATASET_TASKS)})"
    return None


def fit_problem(modality: str, tasks: list[str], data_task: str, task_key: str = "data.task") -> str | None:
    """Why a source of `modality` meant for `tasks` cannot feed `data_task` (named by `task_key`), or None."""
    problem = unknown_names(modality, tasks)
    if problem:
        return problem
    if data_task not in MODALITY_TASKS[modality]:
        fitting = [m for m, allowed in MODALITY_TASKS.items() if data_task in allowed]
        return f"modality {modality} cannot feed {task_key} {data_task} (it reads {' or '.join(fitting)})"
    if tasks and not any(data_task in DATASET_TASKS[t] for t in tasks):
        fitting = [t for t, allowed in DATASET_TASKS.items() if data_task in allowed and t not in DATA_TASKS]
        return f"it is meant for {', '.join(tasks)}; {task_key} {data_task} takes datasets for {', '.join(fitting)}"
    return None


def mixing_problem(mixing: str, tasks: list[str]) -> str | None:
    """Why sources of these data tasks (one per source) cannot be mixed per sample, or None."""
    if mixing != "sample" or len(set(tasks)) <= 1:
        return None
    listed = ", ".join(f"data.sources[{i}] {task}" for i, task in enumerate(tasks))
    return (
        f"data.mixing sample puts samples of several sources in one batch, but their tasks differ ({listed}) and "
        "each task batches its own way: set data.mixing: batch (each step's batch from one source), or give the "
        "sources one task"
    )
