"""Classification predictions over `eval.sources` (else `data.sources`), read in order (no shuffling), one task per model family:

- `zero_shot` (model.kind siglip | clip): one text per class (`eval.prompt` with the class name); the scores are
  the model's `logits_per_image`; single-label takes the argmax, multi-label `sigmoid(score) >= threshold`
  (meaningful for SigLIP, whose logits are trained as independent sigmoids).
- `vqa` (model.kind lxmert, `task_qa: true`): LXMERT's own QA head; answer i of the head is `eval.class_names[i]`
  (so `num_qa_labels` must equal their number). The question is the json field `eval.question_field`, else the
  caption; regions come from `region_features` shards (`open-vlm extract`).

Labels come from the json field `eval.label_field`: a class name, an index, or (multi-label) a list of them.
The model is `eval.checkpoint` (a training checkpoint, run folder or exported folder) when given, else the `model`
section.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from open_vlm.config.schema import RunConfig
from open_vlm.data.decode import IMAGE_SUFFIXES, SampleError, decode_region_features
from open_vlm.data.shards import expand_urls, iter_tar_samples, open_url
from open_vlm.models.registry import build_model
from open_vlm.tokenize.tokenizers import load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Predictions:
    labels: list = field(default_factory=list)  # class index, or a (C,) 0/1 array when multi-label
    scores: list[np.ndarray] = field(default_factory=list)  # (C,) logits per sample
    keys: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def parse_label(value, names: list[str], multi_label: bool):
    """A json label → class index (or multi-hot vector); None when it names no class."""
    values = value if isinstance(value, list) else [value]
    index = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | str):
            return None
        if isinstance(v, int):
            if not 0 <= v < len(names):
                return None
            index.append(v)
        elif v in names:
            index.append(names.index(v))
        else:
            return None
    if multi_label:
        hot = np.zeros(len(names), dtype=np.int64)
        hot[index] = 1
        return hot
    return index[0] if len(index) == 1 else None


def raw_samples(cfg: RunConfig) -> Iterator[tuple[dict, str]]:
    """(raw sample, modality) of every source, shard by shard, in order."""
    for source in cfg.eval.sources or cfg.data.sources:
        for url in expand_urls(source.urls):
            with open_url(url) as stream:
                for sample in iter_tar_samples(stream, url):
                    yield sample, source.modality


@dataclass
class EvalModel:
    """The model under evaluation and how its inputs are made."""

    model: torch.nn.Module
    kind: str
    tokenizer: object
    max_text_len: int
    pixels: Callable[[list], torch.Tensor]  # PIL images → normalised pixel values, as the model expects


def eval_model(cfg: RunConfig) -> EvalModel:
    """`eval.checkpoint` (a checkpoint, run folder or exported folder: preprocessing as it was trained), else the
    `model` section (`model.pretrained` or `model.config`, with `data.max_text_len`)."""
    if cfg.eval.checkpoint:
        from open_vlm.inference.processor import InferenceProcessor
        from open_vlm.inference.wrapper import load

        loaded = load(cfg.eval.checkpoint)
        processor = InferenceProcessor(loaded.tokenizer, loaded.settings)
        s = loaded.settings
        log.info("evaluating %s (%s, step %s)", loaded.source, s.kind, loaded.step)
        return EvalModel(loaded.model, s.kind, loaded.tokenizer, s.max_text_len, processor.pixel_values)
    from open_vlm.extract.grid import pixel_values

    tokenizer = load_tokenizer(cfg.model.tokenizer) if cfg.model.tokenizer else None
    bundle = build_model(cfg.model, tokenizer)
    pixels = functools.partial(pixel_values, size=bundle.image_size, kind=bundle.kind)
    return EvalModel(bundle.model, bundle.kind, tokenizer, cfg.data.max_text_len, pixels)


class ZeroShotTask:
    """SigLIP / CLIP image-text scores against one prompt per class."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        from open_vlm.tokenize.contrastive import ContrastiveProcessor

        loaded = eval_model(cfg)
        if loaded.kind not in ("siglip", "clip"):
            raise ValueError(f"eval.task zero_shot needs model.kind siglip or clip, got {loaded.kind!r}")
        if loaded.tokenizer is None:
            raise ValueError("eval.task zero_shot needs model.tokenizer")
        self.model = loaded.model.eval().to(device)
        self.pixels, self.device = loaded.pixels, device
        encode = ContrastiveProcessor(loaded.tokenizer, loaded.max_text_len).encode
        texts = [encode(cfg.eval.prompt.format(name)) for name in cfg.eval.class_names]
        self.input_ids = torch.stack([t[0] for t in texts]).to(device)
        self.attention_mask = torch.stack([t[1] for t in texts]).to(device)

    def prepare(self, sample: dict, modality: str):
        import io

        from PIL import Image

        suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
        if suffix is None:
            raise SampleError("missing_field", "no image")
        try:
            return Image.open(io.BytesIO(sample[suffix])).convert("RGB")
        except Exception as err:  # PIL raises many types for bad data
            raise SampleError("bad_image", str(err)) from err

    @torch.no_grad()
    def score(self, items: list) -> torch.Tensor:
        pixels = self.pixels(items).to(self.device)
        out = self.model(input_ids=self.input_ids, attention_mask=self.attention_mask, pixel_values=pixels)
        return out.logits_per_image.float().cpu()


class VqaTask:
    """LXMERT's QA head over region features and a question."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        from open_vlm.tokenize.registry import build_processor

        loaded = eval_model(cfg)
        if loaded.kind != "lxmert":
            raise ValueError(f"eval.task vqa needs model.kind lxmert, got {loaded.kind!r}")
        self.model = loaded.model.eval().to(device)
        config = self.model.config
        if not config.task_qa or config.num_qa_labels != len(cfg.eval.class_names):
            raise ValueError(
                f"eval.task vqa: the model's QA head has {config.num_qa_labels} answers (task_qa={config.task_qa}); "
                f"eval.class_names has {len(cfg.eval.class_names)}"
            )
        # No MLM corruption, no mismatched pairs: the question as written, with its own image.
        self.process, self.collate = build_processor(
            "lxmert",
            loaded.tokenizer,
            num_regions=cfg.eval.num_regions,
            max_len=loaded.max_text_len,
            mlm_prob=0.0,
            negative_prob=0.0,
        )
        self.question_field, self.device = cfg.eval.question_field, device

    def prepare(self, sample: dict, modality: str):
        decoded = decode_region_features(sample, 0)
        meta = json.loads(sample["json"]) if "json" in sample else {}
        question = meta.get(self.question_field) if isinstance(meta, dict) else None
        if isinstance(question, str):
            decoded["text"] = question
        decoded["__key__"] = sample["__key__"]
        return self.process(decoded)

    @torch.no_grad()
    def score(self, items: list) -> torch.Tensor:
        from open_vlm.models.lxmert import INPUTS

        batch = self.collate(items)
        out = self.model(**{k: batch[k].to(self.device) for k in INPUTS if k in batch})
        return out.question_answering_score.float().cpu()


TASKS = {"zero_shot": ZeroShotTask, "vqa": VqaTask}


def predict(cfg: RunConfig, device: torch.device) -> Predictions:
    """Scores and labels of every (labelled, decodable) sample, up to `eval.max_samples`."""
    options = cfg.eval
    if not options.class_names:
        raise ValueError("eval.class_names is empty")
    if not (cfg.eval.sources or cfg.data.sources):
        raise ValueError("eval.sources and data.sources are empty: give the shards to evaluate on")
    task = TASKS[options.task](cfg, device)
    out = Predictions()
    batch: list = []

    def flush() -> None:
        scores = task.score([item for item, _ in batch])
        for (_, (key, label)), row in zip(batch, scores):
            out.keys.append(key)
            out.labels.append(label)
            out.scores.append(row.numpy())
        batch.clear()

    for sample, modality in raw_samples(cfg):
        if options.max_samples and len(out.keys) + len(batch) >= options.max_samples:
            break
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except json.JSONDecodeError:
            meta = {}
        label = parse_label(meta.get(options.label_field), options.class_names, options.multi_label)
        if label is None:
            out.skipped["no_label"] += 1
            continue
        try:
            item = task.prepare(sample, modality)
        except SampleError as err:
            out.skipped[err.kind] += 1
            continue
        batch.append((item, (sample["__key__"], label)))
        if len(batch) == cfg.data.batch_size:
            flush()
    if batch:
        flush()
    if out.skipped:
        log.warning("skipped samples: %s", dict(out.skipped))
    return out


def decide(scores: np.ndarray, multi_label: bool, threshold: float) -> np.ndarray:
    """Predicted classes from (N, C) scores: the argmax, or `sigmoid(score) >= threshold` per class."""
    if multi_label:
        return (1.0 / (1.0 + np.exp(-scores)) >= threshold).astype(np.int64)
    return scores.argmax(axis=1)
