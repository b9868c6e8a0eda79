"""Padding token sequences into batches (right or left, to the longest or a multiple) and counting tokens.

Invalid rows: the loader keeps a bad sample's place in the batch by filling it with a copy of another good
processed sample marked `"__valid__": False`. Collators return `valid` (B,) bool and give such rows no
supervision (labels IGNORE) and no counts, so batch shapes never depend on which samples were bad.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IGNORE = -100  # label value that the loss skips (PyTorch's cross_entropy default ignore_index)
# Stacked over the rows that have them: a batch may mix image and text-only rows (the models put each image's
# features on the image tokens, in row order).
IMAGE_KEYS = ("pixel_values",)
SIDES = ("right", "left")


def padded_length(lengths: list[int], multiple: int = 1, length: int | None = None) -> int:
    """The batch length: `length` when given (must fit), else the longest rounded up to `multiple`."""
    longest = max(lengths)
    if length is not None:
        if longest > length:
            raise ValueError(f"a sequence of {longest} tokens does not fit the fixed length {length}")
        return length
    return -(-longest // multiple) * multiple


def pad_to(seqs: list[torch.Tensor], value, length: int, side: str = "right") -> torch.Tensor:
    """Stack 1-D (or leading-dim) tensors into (B, length, ...), filling with `value` on `side`."""
    if side not in SIDES:
        raise ValueError(f"padding side must be one of {SIDES}, got {side!r}")
    out = torch.full((len(seqs), length, *seqs[0].shape[1:]), value, dtype=seqs[0].dtype)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, : len(s)] = s
        else:
            out[i, length - len(s) :] = s
    return out


def pad_right(seqs: list[torch.Tensor], value, multiple: int = 1) -> torch.Tensor:
    return pad_to(seqs, value, padded_length([len(s) for s in seqs], multiple), "right")


def pad_left(seqs: list[torch.Tensor], value, multiple: int = 1) -> torch.Tensor:
    return pad_to(seqs, value, padded_length([len(s) for s in seqs], multiple), "left")


def valid_rows(samples: list[dict]) -> torch.Tensor:
    """(B,) bool: False for rows the loader filled with a copy of another sample (`"__valid__": False`)."""
    return torch.tensor([bool(s.get("__valid__", True)) for s in samples], dtype=torch.bool)


def num_supervised(labels: torch.Tensor, shift: bool = True) -> int:
    """Tokens the loss sees: labels != IGNORE, after the next-token shift when `shift`."""
    return int(((labels[:, 1:] if shift else labels) != IGNORE).sum())


@dataclass
class SequenceCollator:
    """Pads the per-sample sequences of a task and stacks everything else; adds the attention mask and counts.

    `pad_values` maps each sequence key to its fill value; `input_ids` must be one of them. Other tensor keys
    of equal shape (pixel_values, region features) are stacked, `pixel_values` over the rows that have an image
    (none: no key). The attention mask is 1 on real tokens.
    Invalid rows keep their tokens (shapes stay fixed) but get labels IGNORE and count no tokens.
    """

    pad_values: dict[str, int]
    padding_side: str = "right"
    pad_to_multiple: int = 1
    max_length: int | None = None  # pad every batch to exactly this length (static shapes)
    label_key: str = "labels"
    shift_labels: bool = True  # next-token labels (causal LMs) vs. per-position labels (MLM)
    stack_keys: tuple[str, ...] = field(default=("pixel_values",))

    def __call__(self, samples: list[dict]) -> dict:
        lengths = [len(s["input_ids"]) for s in samples]
        length = padded_length(lengths, self.pad_to_multiple, self.max_length)
        batch: dict = {}
        for key, value in self.pad_values.items():
            batch[key] = pad_to([s[key] for s in samples], value, length, self.padding_side)
        ones = [torch.ones(n, dtype=torch.long) for n in lengths]
        batch["attention_mask"] = pad_to(ones, 0, length, self.padding_side)
        for key in self.stack_keys:
            if key in IMAGE_KEYS:  # text-only rows have no image: the rows' image tokens say whose it is
                present = [s[key] for s in samples if key in s]
                if present:
                    batch[key] = torch.stack(present)
            elif key in samples[0]:
                batch[key] = torch.stack([s[key] for s in samples])
        valid = valid_rows(samples)
        batch[self.label_key][~valid] = IGNORE
        batch["valid"] = valid
        batch["num_tokens"] = int(batch["attention_mask"][valid].sum())
        batch["num_supervised"] = num_supervised(batch[self.label_key], self.shift_labels)
        batch["__meta__"] = [s.get("__meta__") for s in samples]
        return batch
