"""`open-vlm extract --config X.yaml [--compare REF]`: image shards → `region_features` shards + manifest (then,
with `--compare`, our regions against another extractor's: `extract/compare.py`).

One output shard per input shard (same file name, same sample keys, the caption and source json carried over).
Under torchrun rank r takes input shards r::world. Output shards that exist are complete (they are committed
atomically) and skipped, so a killed run continues where it stopped and writes the same bytes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from PIL import Image
from tqdm import tqdm

from open_vlm.config.load import ConfigError, dump_config, ignored_keys, load_run_config
from open_vlm.config.schema import RunConfig
from open_vlm.config.validate import check_inputs
from open_vlm.data.decode import IMAGE_SUFFIXES, SampleError, decode_text
from open_vlm.data.manifest import read_manifest, write_manifest
from open_vlm.data.shards import expand_urls, iter_tar_samples, open_url
from open_vlm.extract.registry import Extractor, build_extractor
from open_vlm.extract.writer import ShardWriter, image_id, output_url, safe_key, sample_members, shard_exists
from open_vlm.runfolder import run_dir, setup_logging
from open_vlm.trainer.parallel import shutdown_distributed

log = logging.getLogger("open_vlm.extract")

# Flag spellings the CLI accepts besides the dotted keys.
FLAG_ALIASES = {
    "--keep-image": "--extract.keep_image=true",
    "--strip-leading-zeros": "--extract.strip_leading_zeros=true",
}


@dataclass
class ExtractResult:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # complete already
    failed: list[str] = field(default_factory=list)
    manifest: str | None = None


def plan(cfg: RunConfig) -> list[tuple[str, str]]:
    """(input, output) shard URLs of the whole job; raises `ConfigError` for a config that cannot run."""
    if not cfg.extract.urls:
        raise ConfigError("extract.urls: give the input image shards")
    if not cfg.extract.out:
        raise ConfigError("extract.out: give the output folder (local or s3://)")
    urls = expand_urls(cfg.extract.urls)
    outs = [output_url(cfg.extract.out, u) for u in urls]
    if len(set(outs)) != len(outs):
        raise ConfigError("extract.urls: two input shards share a file name; their outputs would collide")
    return list(zip(urls, outs))


def pick_device(choice: str) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _input_counts(urls: list[str]) -> dict[str, int]:
    """Sample counts from the manifest beside the inputs, for the progress bar (empty when there is none)."""
    try:
        manifest = read_manifest(posixpath.join(posixpath.dirname(urls[0]), "manifest.json"))
    except (FileNotFoundError, ValueError, KeyError, OSError):
        return {}
    return {s.url: s.num_samples for s in manifest.shards}


def _raise(kind: str, where: str, err: Exception) -> None:
    raise ValueError(f"{where}: {kind} ({err})")


def iter_images(url: str) -> Iterator[tuple[dict, str, Image.Image]]:
    """(raw sample, image suffix, RGB image) for each sample of a shard; samples without a readable image are
    skipped with a warning; a truncated shard raises (its output must not look complete)."""
    with open_url(url) as stream:
        for sample in iter_tar_samples(stream, url, on_error=_raise):
            if not safe_key(sample["__key__"]):  # `../x`, `/etc/x`: never a member name of ours
                log.warning("%s key %r: a path outside the shard, skipped", url, sample["__key__"])
                continue
            suffix = next((s for s in IMAGE_SUFFIXES if s in sample), None)
            if suffix is None:
                log.warning("%s key %s: no image, skipped", url, sample["__key__"])
                continue
            try:
                image = Image.open(io.BytesIO(sample[suffix]))
                image = image.convert("RGB")
            except Exception as err:  # PIL raises many types for bad data
                log.warning("%s key %s: undecodable image (%s), skipped", url, sample["__key__"], err)
                continue
            yield sample, suffix, image


def _caption_and_json(sample: dict) -> tuple[str | None, dict | None]:
    try:
        caption = decode_text(sample)
    except SampleError:
        caption = None
    meta = None
    if "json" in sample:
        try:
            loaded = json.loads(sample["json"])
            meta = loaded if isinstance(loaded, dict) else None
        except json.JSONDecodeError:
            meta = None
    return caption, meta


def extract_shard(extractor: Extractor, in_url: str, out_url: str, cfg: RunConfig, progress: tqdm) -> int:
    """Extract one shard into `out_url` (committed only when complete); returns the samples written."""
    options = cfg.extract
    written = 0
    with ShardWriter(out_url) as writer:

        def flush(batch: list[tuple[dict, str, Image.Image]]) -> None:
            nonlocal written
            for (sample, suffix, image), regions in zip(batch, extractor([b[2] for b in batch])):
                caption, meta = _caption_and_json(sample)
                members = sample_members(
                    regions,
                    image_id=image_id(sample["__key__"], options.strip_leading_zeros),
                    size=image.size,
                    caption=caption,
                    source_json=meta,
                    image=(suffix, sample[suffix]) if options.keep_image else None,
                )
                writer.write(sample["__key__"], members)
            written += len(batch)
            progress.update(len(batch))

        batch: list[tuple[dict, str, Image.Image]] = []
        for item in iter_images(in_url):
            batch.append(item)
            if len(batch) == options.batch_size:  # batches never span shards: a resumed shard batches alike
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    return written


def extract(cfg: RunConfig, rank: int = 0, world: int = 1) -> ExtractResult:
    """Extract this rank's shards (`r::world`); rank 0 writes the manifest once every output exists."""
    jobs = plan(cfg)
    mine = jobs[rank::world]
    todo = [(i, o) for i, o in mine if not shard_exists(o)]
    result = ExtractResult(skipped=[o for i, o in mine if (i, o) not in todo])
    if result.skipped:
        log.info("%d output shard(s) complete already, skipped", len(result.skipped))
    if todo:
        device = pick_device(cfg.extract.device)
        extractor = build_extractor(cfg, device)
        log.info("extractor %s on %s: %d shard(s) to write", extractor.name, device, len(todo))
        counts = _input_counts([i for i, _ in todo])
        total = sum(counts.get(i, 0) for i, _ in todo) or None
        with tqdm(total=total, unit="img", desc=f"extract rank {rank}", disable=rank != 0) as progress:
            for in_url, out_url in todo:
                try:
                    n = extract_shard(extractor, in_url, out_url, cfg, progress)
                except (ValueError, OSError) as err:
                    log.error("%s failed: %s", in_url, err)
                    result.failed.append(in_url)
                    continue
                log.info("%s → %s (%d samples)", in_url, out_url, n)
                result.written.append(out_url)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    outs = [o for _, o in jobs]
    if rank == 0 and all(shard_exists(o) for o in outs):
        result.manifest = posixpath.join(cfg.extract.out.rstrip("/"), "manifest.json")
        write_manifest(outs, result.manifest)
    return result


def pop_option(argv: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` (or `flag=VALUE`) from `argv`; the value, or None when absent."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            del argv[i]
            return argv.pop(i)
        if arg.startswith(f"{flag}="):
            return argv.pop(i).split("=", 1)[1]
    return None


def compare_outputs(cfg: RunConfig, reference: str, folder) -> int:
    """Compare the finished output shards with `reference`: print the table, write `compare.json`."""
    from open_vlm.extract.compare import compare, read_reference, read_shards, render

    outs = [o for _, o in plan(cfg)]
    missing = [o for o in outs if not shard_exists(o)]
    if missing:
        print(
            f"error: --compare: {len(missing)} output shard(s) are not written yet, e.g. {missing[0]}", file=sys.stderr
        )
        return 2
    try:
        ours = {}
        for url in outs:
            ours.update(read_shards(url))
        result = compare(ours, read_reference(reference))
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result["summary"].update(ours=cfg.extract.out, reference=reference)
    path = folder / "compare.json"
    path.write_text(json.dumps(result, indent=1))
    print(render(result))
    print(f"compare: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = [FLAG_ALIASES.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    reference = pop_option(argv, "--compare")
    try:
        cfg = load_run_config(argv)
        plan(cfg)
        check_inputs(cfg, "extract")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    folder = run_dir(cfg.run.output_dir, cfg.run.project, cfg.run.name)
    setup_logging(folder, cfg.run.project, "extract", cfg.logging.level, rank=rank)
    ignored = ignored_keys(argv, "extract")
    if ignored:
        log.warning("extract ignores these config keys: %s", ", ".join(ignored))
    if rank == 0:
        (folder / "config.yaml").write_text(dump_config(cfg))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if cfg.extract.device != "cpu" and torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    try:
        result = extract(cfg, rank, world)
    except ValueError as err:
        log.error("%s", err)
        return 2
    finally:
        if world > 1:
            shutdown_distributed()
    if rank == 0:
        print(f"wrote {len(result.written)} shard(s), {len(result.skipped)} complete already, to {cfg.extract.out}")
        if result.manifest:
            print(f"manifest: {result.manifest}")
    if result.failed:
        print(f"error: {len(result.failed)} shard(s) failed: {result.failed}", file=sys.stderr)
        return 1
    if reference and rank == 0:
        return compare_outputs(cfg, reference, folder)
    return 0
