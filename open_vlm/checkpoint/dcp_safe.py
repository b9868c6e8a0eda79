"""Reading torch.distributed.checkpoint (DCP) files without running the pickles inside them.

DCP reads a checkpoint's `.metadata` with plain `pickle.load` and its non-tensor items with
`torch.load(weights_only=False)`: a checkpoint from a shared bucket could run any code on load. The readers
here unpickle `.metadata` with an allowlist of the classes DCP writes there (found by saving every model
kind under single, DDP and FSDP2, optimizer state included), and the planner loads non-tensor items with
`weights_only=True`. Every checkpoint read in the package goes through `reader_for` and `SafeLoadPlanner`.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader  # DCP's fsspec backend (private module)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from open_vlm.storage import is_remote, local_path

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
PICKLE_OPCODES = frozenset(op.code.encode("latin-1") for op in pickletools.opcodes)
ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        (_DCP_METADATA, "Metadata"),
        (_DCP_METADATA, "StorageMeta"),
        (_DCP_METADATA, "MetadataIndex"),
        (_DCP_METADATA, "TensorStorageMetadata"),
        (_DCP_METADATA, "BytesStorageMetadata"),
        (_DCP_METADATA, "ChunkStorageMetadata"),
        (_DCP_METADATA, "TensorProperties"),
        (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.serialization", "_get_layout"),  # layout by name, e.g. "torch.strided"
        ("torch", "Size"),
        ("pathlib", "PosixPath"),  # StorageMeta.checkpoint_id of a local save
        ("collections", "OrderedDict"),
    }
)


class UnsafeCheckpoint(ValueError):
    """A checkpoint file holds something a checkpoint never contains (possibly a code-running payload)."""


@contextmanager
def refusing_pickles(where: str) -> Iterator[None]:
    """Inside, a torch weights file (`.pt`, `.bin`...) holding more than plain data is an `UnsafeCheckpoint` naming
    `where` and the class it asked for (torch's `weights_only` refusal, in one line)."""
    try:
        yield
    except pickle.UnpicklingError as err:
        asked = re.search(r"GLOBAL ([\w.]+)", str(err))
        operand = re.search(r"Unsupported operand (\d+)", str(err))
        if asked is None and operand is not None and bytes([int(operand[1]) % 256]) not in PICKLE_OPCODES:
            raise ValueError(  # garbage, not a payload: damage a resume may fall back past
                f"{where}: not a readable torch file (byte {int(operand[1])} is no pickle instruction: the file is "
                "damaged, or not a weights file)"
            ) from None
        what = f"refers to {asked.group(1)}" if asked else "holds more than plain tensors"
        raise UnsafeCheckpoint(
            f"{where}: a weights file there {what}, which weights never contain; refusing to load it (a pickle payload "
            "could run code: use files you trust, or safetensors)"
        ) from None


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise UnsafeCheckpoint(
            f"{self.where}: refers to {module}.{name}, which DCP metadata never contains; refusing to load "
            "this checkpoint (its .metadata may have been tampered with: use a checkpoint you trust)"
        )


def load_metadata(file, where: str) -> Metadata:
    """Unpickle a DCP `.metadata` stream with the allowlist: `UnsafeCheckpoint` for a class outside it, ValueError
    for a damaged file (truncated, garbage, or allowed objects that are no metadata: nothing of it ran)."""
    try:
        metadata = _MetadataUnpickler(file, where).load()
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # truncated or garbage: damage a resume may fall back past
        raise ValueError(f"{where}: not a readable DCP metadata file ({type(err).__name__}: {err})") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{where}: holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


class _SafeMetadata:
    """`read_metadata` through the allowlist (mixed into DCP's readers; the same body as theirs otherwise)."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = load_metadata(stream, str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeFileSystemReader(_SafeMetadata, dcp.FileSystemReader):
    """DCP's local reader with restricted metadata unpickling."""


class SafeFsspecReader(_SafeMetadata, FsspecReader):
    """DCP's fsspec reader with restricted metadata unpickling."""


def reader_for(url: str):
    """A DCP storage reader for a local path or any fsspec URL; it never unpickles arbitrary classes."""
    return SafeFsspecReader(url) if is_remote(url) else SafeFileSystemReader(local_path(url))


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, but non-tensor items (optimizer hyperparameters...) load with `weights_only=True`."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        data = value.getvalue()
        try:  # the restricted unpickler accepts it, so the full one below builds the same plain objects
            torch.load(io.BytesIO(data), weights_only=True)
        except pickle.UnpicklingError as err:
            first = str(err).strip().splitlines()[0]
            raise UnsafeCheckpoint(
                f"checkpoint item {read_item.dest_index.fqn} is not plain data ({first}); refusing to load it"
            ) from None
        super().load_bytes(read_item, io.BytesIO(data))
