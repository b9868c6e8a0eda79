"""What a committed checkpoint holds, and checking a checkpoint against it.

At commit the `COMPLETE` marker records every file of the checkpoint: `{"files": {"<relative path>": {"size": N,
"sha256": "<hex>"}}}` (the checksum unless `checkpoint.checksums` is off). `verify_checkpoint` compares a
checkpoint with that record: the cheap form (sizes, and the small JSON files parse) runs before every resume;
the full form (`open-vlm view CKPT --verify`) re-reads every file and compares checksums too. A checkpoint
committed before files were recorded gets the checks that need no record (its required files exist).
"""

from __future__ import annotations

import hashlib
import json
import logging

import fsspec

from open_vlm.checkpoint.files import read_bytes

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
CHUNK = 1 << 22
# Files every checkpoint has (what an older marker, without a file record, is checked against).
REQUIRED = (".metadata", "extra.pt", "data.json", "meta.json")
JSON_FILES = ("data.json", "meta.json")  # small, and resume reads them first: parsed in the cheap check too


class CheckpointDamaged(RuntimeError):
    """A committed checkpoint no longer matches what was written (a file missing, cut short or changed)."""


def list_files(url: str) -> dict[str, int]:
    """Size of every file under a checkpoint folder (relative path → bytes), the marker left out."""
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    fs.invalidate_cache()
    found = fs.find(root, detail=True)
    sizes = {}
    for path, info in found.items():
        rel = path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
        if info.get("type", "file") == "file" and rel != MARKER:
            sizes[rel] = int(info["size"])
    return sizes


def file_digest(url: str) -> str:
    """The sha256 of a file (local or any fsspec URL), read in chunks."""
    digest = hashlib.sha256()
    fs, path = fsspec.core.url_to_fs(url)
    with fs.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_marker(url: str) -> dict:
    """The parsed `COMPLETE` marker of a checkpoint (an older, empty marker reads as {})."""
    data = read_bytes(f"{url.rstrip('/')}/{MARKER}")
    if not data.strip():
        return {}
    marker = json.loads(data)
    if not isinstance(marker, dict):
        raise ValueError(f"{MARKER} holds a {type(marker).__name__}, not an object")
    return marker


def verify_checkpoint(url: str, checksums: bool = False) -> list[str]:
    """What is wrong with a committed checkpoint ([] when nothing): one line per damaged file.

    Sizes always; `checksums` re-reads every file and compares its sha256 with the marker's."""
    url = url.rstrip("/")
    try:
        marker = read_marker(url)
    except (OSError, ValueError) as err:
        return [f"{MARKER}: unreadable ({type(err).__name__}: {err})"]
    try:
        sizes = list_files(url)
    except OSError as err:
        return [f"cannot list the files ({type(err).__name__}: {err})"]
    recorded = marker.get("files")
    problems = []
    if recorded is None:  # committed before files were recorded: what every checkpoint has must be there
        problems += [f"{name}: missing" for name in REQUIRED if name not in sizes]
    else:
        for rel, record in sorted(recorded.items()):
            if rel not in sizes:
                problems.append(f"{rel}: missing")
            elif sizes[rel] != record["size"]:
                problems.append(f"{rel}: {sizes[rel]} bytes, {record['size']} when committed")
            elif checksums and record.get("sha256") and file_digest(f"{url}/{rel}") != record["sha256"]:
                problems.append(f"{rel}: contents changed since the commit (sha256 differs)")
    broken = {p.split(":", 1)[0] for p in problems}
    for name in JSON_FILES:
        if name in sizes and name not in broken:
            try:
                json.loads(read_bytes(f"{url}/{name}"))
            except (OSError, ValueError) as err:
                problems.append(f"{name}: unreadable ({type(err).__name__}: {err})")
    return problems


def describe_damage(url: str, problems: list[str]) -> str:
    """One line naming the checkpoint and what is wrong with it."""
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return f"checkpoint {url} is damaged: {shown}"
