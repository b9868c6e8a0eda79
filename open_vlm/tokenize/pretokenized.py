"""Pre-tokenized shards: processor outputs stored as `.npy` members, read back without tokenizing again.

`tools/tokenize_shards.py` runs a task's processor once and writes, per sample, every tensor it returns as
`<key>.<name>.npy`, except `pixel_values`, whose source image bytes are copied instead (so the model's image
size can still change). Sources of modality `pretokenized` decode to `{"arrays": {name: tensor}, "image"?}`,
and `PretokenizedProcessor` turns that back into exactly what the on-the-fly processor returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from open_vlm.data.decode import IMAGE_SUFFIXES

PRETOKENIZED = "pretokenized"  # the source modality of shards written by tools/tokenize_shards.py
# Processor outputs rebuilt from the decoded sample rather than stored: output key → decoded key.
PASSTHROUGH = {"pixel_values": "image"}
KEPT_MEMBERS = (*IMAGE_SUFFIXES, "txt", "json")  # raw members copied into pre-tokenized shards


def stored_members(raw: dict, processed: dict) -> dict:
    """The members of one pre-tokenized sample: kept raw members plus `<name>.npy` per processed tensor."""
    out = {"__key__": raw["__key__"]}
    out.update({suffix: raw[suffix] for suffix in KEPT_MEMBERS if suffix in raw})
    for name, value in processed.items():
        if name in PASSTHROUGH or name.startswith("__"):
            continue
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"processor output {name!r} is {type(value).__name__}; only tensors can be stored")
        out[f"{name}.npy"] = np.ascontiguousarray(value.numpy())
    return out


class PretokenizedProcessor:
    """Decoded pre-tokenized sample → the processor output it was made from (no tokenizer involved)."""

    def __call__(self, sample: dict, source=None) -> dict:
        out = dict(sample["arrays"])
        for name, decoded in PASSTHROUGH.items():
            if decoded in sample:
                out[name] = sample[decoded]
        return out


@dataclass
class RouteByModality:
    """Sends samples of `pretokenized` sources to `PretokenizedProcessor` and all others to the task's processor,
    so a run can mix raw and pre-tokenized sources of one task."""

    task_processor: Callable[[dict, object], dict]

    def __post_init__(self):
        self.stored = PretokenizedProcessor()

    def __call__(self, sample: dict, source=None) -> dict:
        if getattr(source, "modality", None) == PRETOKENIZED:
            return self.stored(sample, source)
        return self.task_processor(sample, source)
