"""Packing a worker's share of a step into few objects for the trip to the main process.

A DataLoader worker sends each tensor through its own shared-memory segment; per sample that is several
segments, and the main process becomes the ceiling. A chunk instead stacks every field whose values share a
shape and dtype (images: one segment per chunk) and sends other tensors as numpy arrays inside the pickle
(small token arrays: no segment at all). `unpack` gives back per-sample dicts whose tensors are views.
"""

from __future__ import annotations

import numpy as np
import torch

_NO_NUMPY = (torch.bfloat16,)  # dtypes numpy cannot hold: sent as tensors


def _same_shape(values: list) -> bool:
    first = values[0]
    return all(isinstance(v, torch.Tensor) and v.shape == first.shape and v.dtype == first.dtype for v in values)


def pack(samples: list[dict | None]) -> dict:
    """`samples` (None for holes) as one dict of columns over the present samples."""
    present = [i for i, s in enumerate(samples) if s is not None]
    keys = list(dict.fromkeys(key for i in present for key in samples[i]))
    columns: dict = {}
    for key in keys:
        if not all(key in samples[i] for i in present):  # an optional field: keep who has it
            columns[key] = ("sparse", {n: samples[i][key] for n, i in enumerate(present) if key in samples[i]})
            continue
        values = [samples[i][key] for i in present]
        if isinstance(values[0], torch.Tensor) and _same_shape(values):
            columns[key] = ("stacked", torch.stack(values))
        elif all(isinstance(v, torch.Tensor) and v.dtype not in _NO_NUMPY for v in values):
            columns[key] = ("arrays", [v.numpy() for v in values])
        else:
            columns[key] = ("objects", values)
    return {"size": len(samples), "present": present, "columns": columns}


def unpack(chunk: dict) -> list[dict | None]:
    """The per-sample dicts (None for holes) of a packed chunk."""
    out: list[dict | None] = [None] * chunk["size"]
    rows: list[dict] = [{} for _ in chunk["present"]]
    for key, (kind, values) in chunk["columns"].items():
        if kind == "sparse":
            for n, value in values.items():
                rows[n][key] = value
            continue
        if kind == "stacked":
            values = values.unbind(0)
        elif kind == "arrays":
            values = [torch.from_numpy(np.asarray(v)) for v in values]
        for row, value in zip(rows, values):
            row[key] = value
    for i, row in zip(chunk["present"], rows):
        out[i] = row
    return out
