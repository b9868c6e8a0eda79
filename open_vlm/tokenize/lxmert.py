"""LXMERT pre-training inputs: masked language modelling, region features, image-text matching.

Every random choice is a pure function of (seed, data), never of a worker's RNG state, so batches are the same
on any number of workers and after a resume:
- MLM masks come from an RNG seeded by (seed, sample key): 15% of the text tokens (not [CLS]/[SEP]) are picked;
  of those 80% become [MASK], 10% a random non-special token, 10% stay; labels hold the original ids there.
- Image-text matching negatives come from an RNG seeded by (seed, the batch's token ids): each sample, with
  probability `negative_prob`, takes the caption of another sample in the batch whose caption differs.
  A mismatched pair gets `matched_label` 0 and the other caption uncorrupted, with no MLM targets (the caption
  does not describe the image, so predicting its words from it would teach the wrong grounding).
- Invalid rows (`"__valid__": False`, see `padding.py`) get no MLM targets and `matched_label` -100 (ignored), and
  are never anyone's negative; the valid rows draw exactly what they would draw in the batch without them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from open_vlm.tokenize.fields import seeded_rng, unfit
from open_vlm.tokenize.padding import IGNORE, SequenceCollator, valid_rows
from open_vlm.tokenize.text import SampleText


def mask_tokens(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    rng: np.random.Generator,
    mask_id: int,
    random_ids: np.ndarray,
    prob: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of `ids` where `candidates`: (masked input ids, labels with -100 where not picked)."""
    n = len(ids)
    picked = torch.from_numpy(rng.random(n) < prob) & candidates
    action = torch.from_numpy(rng.random(n))
    replacement = torch.from_numpy(random_ids[rng.integers(0, len(random_ids), n)]).long()
    labels = torch.where(picked, ids, IGNORE)
    out = ids.clone()
    out[picked & (action < 0.8)] = mask_id
    swap = picked & (action >= 0.8) & (action < 0.9)
    out[swap] = replacement[swap]
    return out, labels


def pad_regions(features: torch.Tensor, boxes: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The first `k` regions, zero-padded to exactly `k`, with a visual attention mask (1 = real region)."""
    n = min(len(features), k)
    feats = torch.zeros(k, features.shape[1], dtype=torch.float32)
    pos = torch.zeros(k, 4, dtype=torch.float32)
    feats[:n], pos[:n] = features[:n], boxes[:n]
    return {"visual_feats": feats, "visual_pos": pos, "visual_attention_mask": (torch.arange(k) < n).long()}


@dataclass
class LxmertProcessor:
    """Decoded `{"features" (R, D), "boxes" (R, 4), "text" (else "question"), "__key__"}` → MLM tokens + K regions."""

    tokenizer: object  # needs cls, sep, mask and pad tokens
    num_regions: int = 36
    max_len: int = 20
    seed: int = 0
    mlm_prob: float = 0.15

    def __post_init__(self):
        tok = self.tokenizer
        self.cls_id, self.sep_id, self.mask_id = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id
        if None in (self.cls_id, self.sep_id, self.mask_id, tok.pad_token_id):
            raise ValueError("tokenizer needs [CLS], [SEP], [MASK] and pad tokens")
        special = set(tok.all_special_ids)
        self.random_ids = np.array([i for i in range(len(tok)) if i not in special], dtype=np.int64)
        self.text = SampleText(tok)

    def __call__(self, sample: dict, source=None) -> dict:
        words = sample.get("text") or sample.get("question")
        if not words:
            raise unfit("lxmert", "a caption (txt / json caption|text) or a question", sample)
        text = self.text.ids(words)[: self.max_len - 2]
        ids = torch.tensor([self.cls_id, *text, self.sep_id], dtype=torch.long)
        candidates = torch.ones(len(ids), dtype=torch.bool)
        candidates[0] = candidates[-1] = False
        rng = seeded_rng(self.seed, "mlm", sample["__key__"])
        masked, labels = mask_tokens(ids, candidates, rng, self.mask_id, self.random_ids, self.mlm_prob)
        out = {"input_ids": masked, "token_type_ids": torch.zeros_like(ids), "labels": labels}
        out.update(pad_regions(sample["features"], sample["boxes"], self.num_regions))
        if "answer_label" in sample:  # an answer index for the QA head (VQA data)
            out["answer_label"] = torch.tensor(int(sample["answer_label"]))
        return out


def unmasked_ids(sample: dict) -> torch.Tensor:
    """The text ids before MLM corruption (the labels hold the originals where tokens were picked)."""
    labels = sample["labels"]
    return torch.where(labels != IGNORE, labels, sample["input_ids"])


@dataclass
class LxmertCollator:
    """Draws ITM negatives, pads text to the longest (or a multiple), stacks regions.

    Batch: `input_ids`, `token_type_ids`, `attention_mask`, `labels` (-100 on padding),
    `visual_feats` (B, K, D), `visual_pos` (B, K, 4), `visual_attention_mask` (B, K), `matched_label` (B,)
    (-100 on invalid rows), `valid` (B,), `num_tokens` (real text tokens of valid rows), `num_supervised` (MLM
    targets; MLM has no next-token shift).
    """

    pad_id: int
    seed: int = 0
    negative_prob: float = 0.5
    pad_to_multiple: int = 1

    def negatives(self, samples: list[dict], valid: list[bool]) -> tuple[list[int | None], list[torch.Tensor]]:
        """For each sample, the index of the sample whose caption it takes (None: matched); the unmasked ids.

        Only valid rows draw and only valid rows are drawn, from an RNG seeded by the valid rows alone."""
        originals = [unmasked_ids(s) for s in samples]
        good = [i for i, ok in enumerate(valid) if ok]
        rng = seeded_rng(self.seed, "itm", b"".join(originals[i].numpy().tobytes() + b"|" for i in good))
        choice: list[int | None] = [None] * len(samples)
        for i in good:
            others = [j for j in good if j != i and not torch.equal(originals[j], originals[i])]
            take = rng.random() < self.negative_prob  # both draws always happen: a fixed RNG stream per batch
            pick = int(rng.integers(0, max(len(others), 1)))
            choice[i] = others[pick] if take and others else None
        return choice, originals

    def __call__(self, samples: list[dict]) -> dict:
        mixed = []
        valid = valid_rows(samples).tolist()
        choice, originals = self.negatives(samples, valid)
        for s, j, ok in zip(samples, choice, valid):
            s = dict(s)
            s["matched_label"] = torch.tensor((1 if j is None else 0) if ok else IGNORE)
            if "answer_label" in s and (j is not None or not ok):  # a swapped caption is not the question asked
                s["answer_label"] = torch.tensor(IGNORE)
            if j is not None:  # the other caption, uncorrupted and without MLM targets
                s["input_ids"] = originals[j]
                s["token_type_ids"] = samples[j]["token_type_ids"]
                s["labels"] = torch.full_like(originals[j], IGNORE)
            mixed.append(s)
        pad_values = {"input_ids": self.pad_id, "token_type_ids": 0, "labels": IGNORE}
        stack = ("visual_feats", "visual_pos", "visual_attention_mask", "matched_label", "answer_label")
        collate = SequenceCollator(
            pad_values,
            "right",
            self.pad_to_multiple,
            label_key="labels",
            shift_labels=False,
            stack_keys=stack,
        )
        return collate(mixed)
