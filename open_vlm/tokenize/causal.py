"""Text-only causal LM inputs: BOS + text + EOS, labels -100 on padding; optional packing of documents.

Packed rows hold several documents back to back. Each document sees only itself (a block-diagonal causal
attention pattern), its position ids restart at 0, and its first token is not a target (nothing before it in
the document predicts it), so the packed loss equals the sum of the documents' unpacked losses.

Invalid documents (`"__valid__": False`, see `padding.py`) are left out of the packs; every row produced is valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from open_vlm.tokenize.fields import caption
from open_vlm.tokenize.padding import IGNORE, SequenceCollator, num_supervised, pad_to, padded_length, valid_rows
from open_vlm.tokenize.text import SampleText

PACKED_MASKS = ("4d_bool", "4d_float", "position_ids")


@dataclass
class CausalLMProcessor:
    """Decoded `{"text"}` → `input_ids` and `labels` (a copy of the ids), cut to `max_len` tokens."""

    tokenizer: object
    max_len: int = 512
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self):
        self.bos_id, self.eos_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        if (self.add_bos and self.bos_id is None) or (self.add_eos and self.eos_id is None):
            raise ValueError("tokenizer lacks the bos/eos token this processor is asked to add")
        self.text = SampleText(self.tokenizer)

    def __call__(self, sample: dict, source=None) -> dict:
        ids = self.text.ids(caption(sample, "causal_lm"))
        ids = ([self.bos_id] if self.add_bos else []) + ids + ([self.eos_id] if self.add_eos else [])
        ids = torch.tensor(ids[: self.max_len], dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone()}


def causal_lm_collator(pad_id: int, padding_side: str = "right", pad_to_multiple: int = 1) -> SequenceCollator:
    """One document per row: `input_ids`, `labels` (-100 on padding), 2-D `attention_mask`."""
    return SequenceCollator({"input_ids": pad_id, "labels": IGNORE}, padding_side, pad_to_multiple)


def pack_documents(lengths: list[int], row_length: int) -> list[list[int]]:
    """Next-fit packing in the given order: indices of the documents in each row (deterministic)."""
    rows: list[list[int]] = []
    used = row_length  # forces a new row for the first document
    for i, n in enumerate(lengths):
        if n > row_length:
            raise ValueError(f"document {i} has {n} tokens, more than the row length {row_length}")
        if used + n > row_length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def block_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) document ids → (B, 1, L, L) bool, True where query i may attend to key j (same document, j <= i)."""
    same = document_ids[:, :, None] == document_ids[:, None, :]
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()
    return (same & causal)[:, None]


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A bool mask → the float mask eager attention adds to its scores (0 where allowed, dtype min elsewhere)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass
class PackedCausalLMCollator:
    """Packs a list of documents into rows of at most `row_length` tokens.

    Returns `input_ids`, `labels` (-100 on padding and on each document's first token), `position_ids`
    (restarting per document), `document_ids` (-1 on padding) and, by `mask`:
    - `4d_bool`: `attention_mask` (B, 1, L, L) bool, True = attend (SDPA / flex attention);
    - `4d_float`: `attention_mask` (B, 1, L, L) additive float (eager or SDPA; cast to the model dtype);
    - `position_ids`: no `attention_mask`; transformers derives the same block-diagonal mask from position ids
      that restart per document (and flash attention uses them as varlen boundaries); call the model with
      `use_cache=False`, since transformers ignores packed position ids when it holds a cache.
    Padding is one more block that attends only to itself, so no attention row is empty.
    `open_vlm.models.registry.lm_forward` leaves the mask out and hands the model the position ids (transformers
    derives each layer's mask from them, a sliding window included), so `mask` matters only to callers that feed
    models themselves.
    Invalid documents are left out; when none is valid, the first one makes a single row marked invalid (labels
    IGNORE), so the forward still runs and the loss is 0.
    """

    pad_id: int
    row_length: int
    mask: str = "4d_bool"
    pad_to_multiple: int = 1
    fixed_length: bool = False  # pad every row to `row_length` instead of the longest row

    def __post_init__(self):
        if self.mask not in PACKED_MASKS:
            raise ValueError(f"mask must be one of {PACKED_MASKS}, got {self.mask!r}")

    def __call__(self, samples: list[dict]) -> dict:
        valid = valid_rows(samples)
        packed = [s for s, ok in zip(samples, valid.tolist()) if ok] or samples[:1]
        docs = [s["input_ids"] for s in packed]
        rows = pack_documents([len(d) for d in docs], self.row_length)
        fields: dict[str, list[torch.Tensor]] = {k: [] for k in ("input_ids", "labels", "position_ids", "document_ids")}
        for row in rows:
            parts = [packed[i] for i in row]
            fields["input_ids"].append(torch.cat([p["input_ids"] for p in parts]))
            labels = [p["labels"].clone() for p in parts]
            for lab in labels:
                lab[0] = IGNORE  # the first token of a document has no in-document predecessor
            fields["labels"].append(torch.cat(labels))
            fields["position_ids"].append(torch.cat([torch.arange(len(p["input_ids"])) for p in parts]))
            fields["document_ids"].append(
                torch.cat([torch.full((len(p["input_ids"]),), k) for k, p in enumerate(parts)])
            )
        lengths = [len(x) for x in fields["input_ids"]]
        length = padded_length(lengths, self.pad_to_multiple, self.row_length if self.fixed_length else None)
        batch = {
            "input_ids": pad_to(fields["input_ids"], self.pad_id, length),
            "labels": pad_to(fields["labels"], IGNORE, length),
            "document_ids": pad_to(fields["document_ids"], -1, length),
        }
        # Padding positions count from 0 again, so they form their own block under every mask format.
        positions = [torch.cat([p, torch.arange(length - len(p))]) for p in fields["position_ids"]]
        batch["position_ids"] = torch.stack(positions)
        if self.mask != "position_ids":
            allowed = block_causal_mask(batch["document_ids"])
            batch["attention_mask"] = allowed if self.mask == "4d_bool" else additive_mask(allowed)
        any_valid = bool(valid.any())
        batch["valid"] = torch.full((len(rows),), any_valid, dtype=torch.bool)
        if not any_valid:
            batch["labels"].fill_(IGNORE)
        batch["num_tokens"] = int((batch["document_ids"] >= 0).sum()) if any_valid else 0
        batch["num_supervised"] = num_supervised(batch["labels"])
        batch["num_documents"] = int(valid.sum())
        batch["__meta__"] = [s.get("__meta__") for s in samples]
        return batch
