"""VQA accuracy on held-out sources: greedy answers scored by VQAv2-normalised exact match (`eval_vqa_accuracy`).

A held-out `image_text` source is a VQA source when the first samples of its first shard carry answers (json
`answer`, or `suffix`). Its questions are asked as training asks them (`prefix_lm`: image tokens + BOS + question
+ separator; `chat_lm`: the user turn with the image, then the assistant's start), the model answers greedily
(`inference/generate.py`), and an answer counts as right when, normalised as the VQAv2 evaluation does (case,
punctuation, articles, number words, contractions), it equals one of the sample's answers normalised alike.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import torch

from open_vlm.config.schema import RunConfig, SourceConfig, source_task
from open_vlm.data.build import build_loader
from open_vlm.data.decode import normalize_images
from open_vlm.tokenize.fields import question_answer, unfit

log = logging.getLogger(__name__)

GENERATIVE = ("prefix_lm", "chat_lm")
# The VQAv2 evaluation's normalisation (vqaEval.py): punctuation, number words, articles, contractions.
PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$:']")
PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
DIGIT_COMMA = re.compile(r"(\d),(\d)")
NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
CONTRACTIONS = {
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "isnt": "isn't",
    "shouldnt": "shouldn't",
    "wasnt": "wasn't",
    "werent": "weren't",
    "wont": "won't",
    "wouldnt": "wouldn't",
}


def normalize_answer(text: str) -> str:
    """An answer as the VQAv2 evaluation compares it: `"Two dogs."` → `"2 dogs"`, `"The Red"` → `"red"`."""
    text = DIGIT_COMMA.sub(r"\1\2", " ".join(text.lower().split()))
    text = PERIOD.sub("", PUNCTUATION.sub(lambda m: "" if m.group(0) == "'" else " ", text))
    words = [NUMBERS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def exact_match(prediction: str, answers: list[str]) -> bool:
    """Whether the normalised prediction equals one of the normalised answers."""
    return normalize_answer(prediction) in {normalize_answer(a) for a in answers}


def is_vqa_source(source: SourceConfig) -> bool:
    """An image-text source whose first samples carry answers (read from the first few samples of one shard)."""
    from open_vlm.data.decode import SampleError, decode_sample
    from open_vlm.data.preflight import probe_shard
    from open_vlm.data.shards import expand_urls

    if source.modality != "image_text":
        return False
    for raw in probe_shard(expand_urls(source.urls)[0], source.modality, limit=4).samples:
        try:
            decoded = decode_sample(raw, source.modality, 8)
        except SampleError:
            continue
        return bool(decoded.get("answers") or decoded.get("suffix"))
    return False


class QuestionProcessor:
    """Decoded sample → its question, every accepted answer and its image (runs in loader workers)."""

    def __init__(self, task: str):
        self.task = task

    def __call__(self, sample: dict, source=None) -> dict:
        pair = question_answer(sample, self.task)
        if pair is None or "image" not in sample:
            raise unfit(self.task, "an image with question + answer (or prefix + suffix)", sample)
        answers = sample.get("answers") or [pair.answer]
        return {"question": pair.prompt, "answers": list(answers), "pixel_values": sample["image"]}


class QuestionCollator:
    """Questions → left-padded generation prompts in the task's format (`InferenceProcessor`), images, answers."""

    def __init__(self, prompts):
        self.prompts = prompts

    def __call__(self, samples: list[dict]) -> dict:
        batch = self.prompts.prompts([s["question"] for s in samples])
        batch["pixel_values"] = torch.stack([s["pixel_values"] for s in samples])
        batch["answers"] = [s["answers"] for s in samples]
        batch["valid"] = [bool(s.get("__valid__", True)) for s in samples]
        return batch


class VQAEvaluator:
    """Exact-match accuracy of greedy answers on the held-out VQA sources (`evaluate` → `eval_vqa_accuracy`)."""

    def __init__(self, cfg: RunConfig, bundle, tokenizer, sources: list[SourceConfig], rank: int = 0, world: int = 1):
        from open_vlm.inference.processor import InferenceProcessor, ProcessorSettings

        self.cfg, self.bundle, self.tokenizer = cfg, bundle, tokenizer
        run_task = cfg.data.task or bundle.task
        self.sources = sources
        tasks = [source_task(s, run_task) for s in sources]
        self.prompts = {
            task: InferenceProcessor(
                tokenizer,
                ProcessorSettings(
                    kind=bundle.kind,
                    task=task,
                    image_size=bundle.image_size,
                    num_image_tokens=bundle.num_image_tokens,
                    prompt=cfg.data.prompt,
                    max_text_len=cfg.data.max_text_len,
                ),
            )
            for task in set(tasks)
        }
        processors = [QuestionProcessor(task) for task in tasks]
        collators = [QuestionCollator(self.prompts[task]) for task in tasks]
        data = dataclasses.replace(cfg.data, sources=sources, num_workers=min(cfg.data.num_workers, 1), mixing="batch")
        self.text = next(iter(self.prompts.values()))  # decoding and the image token: one tokenizer for all
        self.global_batch = data.batch_size * world
        self.loader = build_loader(
            data,
            seed=cfg.train.seed,
            global_batch=self.global_batch,
            image_size=bundle.image_size,
            process=processors,
            collate=collators,
            rank=rank,
            world=world,
        )
        self.start = self.loader.local_state_dict()
        samples = min(src.manifest.num_samples for src in self.loader.sources)
        self.num_batches = cfg.eval.max_batches or max(1, samples // self.global_batch)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device: torch.device, all_reduce=lambda x: x) -> dict[str, float]:
        """`eval_vqa_accuracy` over `num_batches` held-out batches (every rank answers its share)."""
        from open_vlm.inference.generate import GenerationSettings, generate_tokens
        from open_vlm.models.attention import unwrap

        inner = unwrap(model)
        settings = GenerationSettings(max_new_tokens=self.cfg.eval.answer_max_tokens)
        right = total = 0.0
        self.loader.load_state_dict(self.start)
        batches = iter(self.loader)
        for _ in range(self.num_batches):
            batch = next(batches)
            pixels = normalize_images(batch["pixel_values"].to(device))
            tokens = generate_tokens(
                inner,
                self.bundle.kind,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                pixels.to(next(inner.parameters()).dtype),
                settings,
                eos_id=self.tokenizer.eos_token_id,
                token_type_ids=batch["token_type_ids"].to(device),
                suppress=(self.text.image_token_id,),
            )
            answers = self.text.decode(tokens)
            for answer, accepted, ok in zip(answers, batch["answers"], batch["valid"]):
                if ok:
                    right += exact_match(answer, accepted)
                    total += 1
        right, total = all_reduce(right), all_reduce(total)
        return {"eval_vqa_accuracy": right / max(total, 1.0)}


def vqa_evaluator(cfg: RunConfig, bundle, tokenizer, sources: list[SourceConfig], rank: int = 0, world: int = 1):
    """A `VQAEvaluator` over the VQA sources among `sources`, or None when there is nothing to score."""
    from open_vlm.inference.generate import generative_kinds

    if not cfg.eval.answer_max_tokens or bundle.kind not in generative_kinds() or tokenizer is None:
        return None
    run_task = cfg.data.task or bundle.task
    vqa = [s for s in sources if source_task(s, run_task) in GENERATIVE and is_vqa_source(s)]
    if not vqa:
        return None
    if cfg.train.strategy == "fsdp":  # ranks would stop generating at different steps: FSDP's gathers must match
        log.warning("eval_vqa_accuracy is not computed under train.strategy fsdp (held-out loss still is)")
        return None
    log.info("held-out VQA accuracy on %s", ", ".join(s.name for s in vqa))
    return VQAEvaluator(cfg, bundle, tokenizer, vqa, rank, world)
