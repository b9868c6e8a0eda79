"""`open-vlm view PATH [--json]`: what a shard, manifest, run folder or checkpoint holds."""

from __future__ import annotations

import json
from collections import Counter

import fsspec

from open_vlm.checkpoint.checkpointer import MARKER, Checkpointer, read_meta
from open_vlm.checkpoint.dcp_io import saved_model_keys
from open_vlm.data.manifest import read_manifest
from open_vlm.data.shards import iter_tar_samples, open_url


def view_shard(url: str, limit: int = 5, boxes_png: str | None = None, index: int = 0) -> dict:
    """Counts, fields and the first samples; for a `region_features` shard that kept its images, sample `index`
    with its boxes drawn is written to a PNG (`boxes_png`, default in the temp dir) and its path returned."""
    suffixes: Counter[str] = Counter()
    keys, count, errors = [], 0, []
    drawn = None
    with open_url(url) as stream:
        for sample in iter_tar_samples(stream, url, on_error=lambda kind, where, err: errors.append(str(err))):
            if count == index and "boxes.npy" in sample:
                from open_vlm.extract.draw import draw_sample_png

                drawn = draw_sample_png(sample, url, boxes_png)
            count += 1
            suffixes.update(k for k in sample if not k.startswith("__"))
            if len(keys) < limit:
                keys.append(
                    {
                        k: (v[:60].decode("utf-8", "replace") if k in ("txt", "json") else f"{len(v)} bytes")
                        for k, v in sample.items()
                        if not k.startswith("__")
                    }
                    | {"__key__": sample["__key__"]}
                )
    return {
        "kind": "shard",
        "url": url,
        "num_samples": count,
        "fields": dict(suffixes),
        "first": keys,
        "errors": errors,
        **({"boxes_png": drawn} if drawn else {}),
    }


def view_manifest(path: str) -> dict:
    manifest = read_manifest(path)
    return {
        "kind": "manifest",
        "url": path,
        "num_shards": len(manifest.shards),
        "num_samples": manifest.num_samples,
        "shards": [{"url": s.url, "num_samples": s.num_samples, "size": s.size} for s in manifest.shards],
    }


def view_checkpoint(url: str) -> dict:
    meta = read_meta(url)
    tensors = len(saved_model_keys(url))  # through the restricted reader: a tampered checkpoint is refused
    return {
        "kind": "checkpoint",
        "url": url,
        "model_tensors": tensors,
        **{k: v for k, v in meta.items() if k != "config"},
    }


def view_run(path: str) -> dict:
    fs, root = fsspec.core.url_to_fs(path)
    checkpoints = Checkpointer(f"{path.rstrip('/')}/checkpoints").list_complete()
    metrics = f"{root.rstrip('/')}/metrics.jsonl"
    last = None
    if fs.exists(metrics):
        lines = fs.cat_file(metrics).decode().splitlines()
        last = json.loads(lines[-1]) if lines else None
    return {
        "kind": "run",
        "url": path,
        "checkpoints": [{"step": s, "url": u} for s, u in checkpoints],
        "last_metrics": last,
    }


def view(path: str, boxes_png: str | None = None, index: int = 0) -> dict:
    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if path.endswith((".tar", ".tar.gz", ".tgz")):
        return view_shard(path, boxes_png=boxes_png, index=index)
    if path.endswith(".json") and not fs.isdir(root):
        return view_manifest(path)
    if fs.exists(f"{root}/{MARKER}") or fs.exists(f"{root}/meta.json"):
        return view_checkpoint(path.rstrip("/"))
    if fs.isdir(root):
        return view_run(path)
    raise FileNotFoundError(f"don't know what {path} is (expected a shard, manifest, run folder or checkpoint)")


def render(info: dict) -> str:
    """A human-readable summary."""
    kind = info["kind"]
    lines = [f"{kind}: {info['url']}"]
    if kind == "shard":
        lines.append(f"  {info['num_samples']} samples; fields: {info['fields']}")
        lines += [f"  {s}" for s in info["first"]]
        lines += [f"  error: {e}" for e in info["errors"]]
        if info.get("boxes_png"):
            lines.append(f"  boxes drawn: {info['boxes_png']}")
    elif kind == "manifest":
        lines.append(f"  {info['num_shards']} shards, {info['num_samples']} samples")
        lines += [f"  {s['url']}: {s['num_samples']} samples, {s['size']} bytes" for s in info["shards"][:20]]
    elif kind == "checkpoint":
        lines.append(
            f"  step {info['step']}, samples_seen {info['samples_seen']}, tokens_seen {info.get('tokens_seen')}"
        )
        for c in info.get("consumed", []):
            state = "complete" if c["complete"] else "partial"
            lines.append(
                f"  [{c['source']} epoch {c['epoch']}] {c['url']}: {c['samples_read']}/{c['num_samples']} {state}"
            )
    elif kind == "run":
        lines += [f"  checkpoint step {c['step']}: {c['url']}" for c in info["checkpoints"]] or ["  no checkpoints"]
        if info["last_metrics"]:
            lines.append(f"  last metrics: {info['last_metrics']}")
    return "\n".join(lines)
