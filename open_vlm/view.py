"""`open-vlm view PATH [--json]`: what a shard, manifest, run folder or checkpoint holds;
`open-vlm view --attention ...`: attention maps of a trained model on an image (`inference/attention.py`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path

import fsspec

from open_vlm.checkpoint.checkpointer import MARKER, Checkpointer, read_meta
from open_vlm.checkpoint.dcp_io import saved_model_keys
from open_vlm.data.manifest import read_manifest
from open_vlm.data.shards import iter_tar_samples, open_url

log = logging.getLogger(__name__)


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
    info = {"kind": "checkpoint", "url": url, "model_tensors": tensors}
    info.update({k: v for k, v in meta.items() if k != "config"})
    files = _consumed_files(url, meta)
    if files is not None:  # the per-file list the compact record stands for
        info["consumed_summary"], info["consumed"] = meta.get("consumed"), files
    return info


def _consumed_files(url: str, meta: dict) -> list[dict] | None:
    """Every tar file a checkpoint's data position touched, rebuilt from its loader state and manifests."""
    from open_vlm.checkpoint.checkpointer import read_bytes
    from open_vlm.config.load import config_from_yaml_text
    from open_vlm.data.build import source_manifest
    from open_vlm.data.consumed import consumed_files
    from open_vlm.data.loader import STATE_VERSION, Source
    from open_vlm.data.order import SourceOrder
    from open_vlm.data.version import manifest_version

    state = json.loads(read_bytes(f"{url}/data.json"))
    if state.get("version") != STATE_VERSION or "config" not in meta:
        return None  # an older checkpoint: its meta.json lists the files itself
    cfg = config_from_yaml_text(meta["config"])
    try:  # the manifests as they are now (never counting shards just to show a checkpoint)
        sources = [
            Source(s.name, s.modality, s.weight, source_manifest(s, count_missing=False)) for s in cfg.data.sources
        ]
    except (OSError, ValueError) as err:  # shards or manifests moved: the summary is all there is
        log.warning("cannot list the consumed files of %s (%s): showing the summary", url, err)
        return None
    changed = [
        src.name for src, saved in zip(sources, state.get("versions", [])) if manifest_version(src.manifest) != saved
    ]
    if changed:  # the same positions would name other files now
        log.warning("data of %s changed since %s (version differs): showing the summary", ", ".join(changed), url)
        return None
    orders = [
        SourceOrder(src.manifest.counts, state["seed"], i, streams, state["window"])
        for i, (src, streams) in enumerate(zip(sources, state["num_streams"]))
    ]
    return consumed_files(orders, sources, state["positions"])


def _records_files(url: str) -> bool:
    """Whether the checkpoint's marker records its files (older markers do not: sizes and checksums are unknown)."""
    from open_vlm.checkpoint.verify import read_marker

    try:
        return read_marker(url).get("files") is not None
    except (OSError, ValueError):
        return True  # an unreadable marker is reported as a problem already


def verify(path: str) -> dict:
    """Every file of a checkpoint (or of every checkpoint of a run folder / checkpoint dir) against its marker."""
    from open_vlm.checkpoint.checkpointer import verify_checkpoint

    fs, root = fsspec.core.url_to_fs(path)
    root = root.rstrip("/")
    if fs.exists(f"{root}/{MARKER}"):
        urls = [path.rstrip("/")]
    else:
        found = Checkpointer(path).list_complete() or Checkpointer(f"{path.rstrip('/')}/checkpoints").list_complete()
        if not found:
            raise FileNotFoundError(f"no committed checkpoint at {path}")
        urls = [url for _, url in found]
    checked = [
        {"url": url, "problems": verify_checkpoint(url, checksums=True), "recorded": _records_files(url)}
        for url in urls
    ]
    return {"kind": "verify", "url": path, "checkpoints": checked, "ok": not any(c["problems"] for c in checked)}


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
    elif kind == "verify":
        for c in info["checkpoints"]:
            if c["problems"]:
                state = "DAMAGED"
            elif c.get("recorded", True):
                state = "ok"
            else:  # an old marker: nothing to compare sizes or contents with
                state = "not verifiable: its COMPLETE records no file sizes or checksums (only required files checked)"
            lines.append(f"  {c['url']}: {state}")
            lines += [f"    {p}" for p in c["problems"]]
    elif kind == "run":
        lines += [f"  checkpoint step {c['step']}: {c['url']}" for c in info["checkpoints"]] or ["  no checkpoints"]
        if info["last_metrics"]:
            lines.append(f"  last metrics: {info['last_metrics']}")
    return "\n".join(lines)


def _indices(values: list[str] | None, flag: str) -> list[int] | str | None:
    """`--layer 0 2` → [0, 2]; `--layer all` → "all"; absent → None."""
    if values is None:
        return None
    if values == ["all"]:
        return "all"
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"{flag}: expected integers or 'all', got {' '.join(values)}") from None


def attention_main(argv: list[str]) -> int:
    """`open-vlm view --attention --checkpoint RUN --image X.jpg [...]`: PNGs per image and selected view."""
    parser = argparse.ArgumentParser(
        prog="open-vlm view", description="Draw where a model looks in an image (attention maps)."
    )
    parser.add_argument("--attention", action="store_true", required=True)
    parser.add_argument("--checkpoint", required=True, help="checkpoint, run folder or exported folder (or s3://)")
    parser.add_argument("--image", required=True, nargs="+", help="image file(s)")
    parser.add_argument("--prompt", default=None, help="paligemma/vlm: default the prompt the model was trained with")
    parser.add_argument("--answer", default=None, help="paligemma/vlm: the answer to explain (default: generated)")
    parser.add_argument("--layer", nargs="+", default=None, help="layer indices or 'all' (default: averaged)")
    parser.add_argument("--head", nargs="+", default=None, help="head indices or 'all' (default: averaged)")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: <tmp>/open_vlm_attention)")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = parser.parse_args(argv)
    from open_vlm.config import validate

    validate.check_model_inputs(args.checkpoint, args.image)
    from open_vlm.inference.attention import write_attention_pngs
    from open_vlm.inference.generate import GenerationSettings
    from open_vlm.inference.wrapper import OpenVLM

    out = args.out or str(Path(tempfile.gettempdir()) / "open_vlm_attention")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    try:
        layers, heads = _indices(args.layer, "--layer"), _indices(args.head, "--head")
        model = OpenVLM.from_pretrained(args.checkpoint, device=args.device)
        for image in args.image:
            maps, paths = write_attention_pngs(model, image, out, args.prompt, args.answer, layers, heads, settings)
            info = {"image": image, "answer": maps.answer, "pngs": [str(p) for p in paths]}
            print(json.dumps(info) if args.json else f"{image}: {maps.answer!r} → {', '.join(info['pngs'])}")
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
