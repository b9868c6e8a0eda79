"""`open-vlm data list|show|add|verify`: browse, register and check the datasets of the catalog; `data bench`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import sys

from open_vlm.config.env import apply_process_env, load_env_config
from open_vlm.config.validate import check_shards
from open_vlm.data.catalog import (
    NAME_PATTERN,
    SPLITS,
    CatalogError,
    DatasetEntry,
    append_entry,
    load_catalog,
    read_catalog_file,
    user_catalog_path,
)
from open_vlm.data.compat import DATASET_TASKS, MODALITY_TASKS, unknown_names
from open_vlm.data.manifest import ShardManifest, read_manifest, write_manifest
from open_vlm.data.preflight import misfit_fix, probe_shard
from open_vlm.data.shards import expand_urls
from open_vlm.data.verify import verify_manifest
from open_vlm.data.version import manifest_version

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="open-vlm data", description="The dataset catalog.")
    sub = parser.add_subparsers(dest="action", required=True)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--catalog", action="append", default=[], help="read this catalog file too (repeatable)")
    sub.add_parser("list", parents=[extra], help="names, modality, tasks, samples, version")
    show = sub.add_parser("show", parents=[extra], help="one dataset in full")
    show.add_argument("name")
    verify = sub.add_parser("verify", parents=[extra], help="re-check the shards against the manifest")
    verify.add_argument("name")
    verify.add_argument("--quick", action="store_true", help="compare sizes/etags only, read no shard")
    verify.add_argument("--split", default="train", choices=SPLITS, help="which split's shards (default train)")
    add = sub.add_parser("add", help="build the manifest and register a dataset")
    add.add_argument("name")
    add.add_argument("urls", nargs="+", help="shard URLs or brace patterns (local or s3://)")
    add.add_argument("--modality", choices=sorted(MODALITY_TASKS), help="required unless --split val|test")
    add.add_argument("--split", default="train", choices=SPLITS, help="val|test: a held-out split of NAME")
    add.add_argument("--task", dest="tasks", action="append", default=[], help=f"one of {sorted(DATASET_TASKS)}")
    add.add_argument("--description", default="")
    add.add_argument("--manifest", default=None, help="default: manifest.json beside the first shard")
    add.add_argument("--catalog", default=None, help=f"catalog file to write (default {user_catalog_path()})")
    add.add_argument("--replace", action="store_true", help="overwrite an entry of that name in the file")
    # Parsed by data/bench.py (it takes config overrides too); listed here for --help.
    sub.add_parser("bench", add_help=False, help="a run config's loader alone: samples/s (bench --help)")
    return parser


def _manifest_summary(entry: DatasetEntry) -> tuple[ShardManifest | None, str]:
    """The entry's manifest, or None and why it could not be read."""
    try:
        return read_manifest(entry.manifest_path()), ""
    except FileNotFoundError:
        return None, f"no manifest at {entry.manifest_path()}"
    except (OSError, ValueError) as err:
        return None, f"unreadable manifest {entry.manifest_path()}: {err}"


def _list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    rows = [("name", "modality", "tasks", "samples", "version", "from")]
    for name, entry in sorted(catalog.entries.items()):
        manifest, _ = _manifest_summary(entry)
        samples = str(manifest.num_samples) if manifest else "-"
        version = manifest_version(manifest) if manifest else "-"
        rows.append((name, entry.modality, ",".join(entry.tasks) or "-", samples, version, catalog.origin(name)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _show(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    entry = catalog.get(args.name)
    manifest, why = _manifest_summary(entry)
    lines = [
        ("name", entry.name),
        ("description", entry.description or "-"),
        ("modality", entry.modality),
        ("tasks", ", ".join(entry.tasks) or "-"),
        ("urls", " ".join(entry.urls)),
        ("manifest", entry.manifest_path()),
        ("from", " < ".join(catalog.origins[entry.name])),
        *[(f"split {name}", " ".join(split["urls"])) for name, split in entry.splits.items()],
    ]
    if entry.augment:
        lines.append(("augment", json.dumps(entry.augment, sort_keys=True)))
    if manifest is None:
        lines.append(("version", f"- ({why})"))
    else:
        version = manifest_version(manifest)
        note = (
            f" (registered as {entry.version}: the manifest changed since)"
            if entry.version not in (None, version)
            else ""
        )
        size = sum(s.size for s in manifest.shards)
        lines += [("shards", str(len(manifest.shards))), ("samples", str(manifest.num_samples))]
        lines += [("bytes", str(size)), ("version", version + note)]
    for key, value in lines:
        print(f"{key:12s} {value}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    entry = load_catalog(args.catalog).get(args.name).for_split(args.split)
    manifest, why = _manifest_summary(entry)
    if manifest is None:
        raise CatalogError(f"{args.name}: {why}; build it with open-vlm data add {args.name} URLS... --replace")
    problems = verify_manifest(manifest, expand_urls(entry.urls), quick=args.quick)
    for problem in problems:
        print(f"{problem.kind:10s} {problem.url}  ({problem.detail})")
    print(f"{args.name}: {len(manifest.shards)} shard(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def _absolute(url: str) -> str:
    """Local paths are stored absolute, so a user catalog works from any directory."""
    return url if "://" in url else os.path.abspath(url)


def _add(args: argparse.Namespace) -> int:
    if not NAME_PATTERN.match(args.name):
        raise CatalogError(f"bad dataset name {args.name!r} (letters, digits, _ . -)")
    if args.split != "train":
        return _add_split(args)
    if not args.modality:
        raise CatalogError(f"--modality is required (one of {sorted(MODALITY_TASKS)})")
    problem = unknown_names(args.modality, args.tasks)
    if problem:
        raise CatalogError(problem)
    patterns = [_absolute(u) for u in args.urls]
    manifest_path = _absolute(args.manifest) if args.manifest else None
    entry = DatasetEntry(args.name, patterns, args.modality, args.tasks, args.description, manifest_path)
    target = args.catalog or str(user_catalog_path())
    if args.name in _existing(target) and not args.replace:  # before the (long) manifest build
        raise CatalogError(f"{target} already has a dataset {args.name!r} (--replace to overwrite it)")
    check_shards("URLS", patterns)
    urls = expand_urls(patterns)
    _warn_on_misfit(args.name, urls[0], args.modality)
    print(f"counting samples of {len(urls)} shard(s)...", file=sys.stderr)
    manifest = write_manifest(urls, entry.manifest_path())
    entry.version = manifest_version(manifest)
    append_entry(target, entry, replace=args.replace)
    print(
        f"registered {entry.name}: {len(urls)} shard(s), {manifest.num_samples} samples, "
        f"version {entry.version}; manifest {entry.manifest_path()}; catalog {target}"
    )
    return 0


def _add_split(args: argparse.Namespace) -> int:
    """Register `--split val|test` shards under a dataset the target catalog file already has."""
    target = args.catalog or str(user_catalog_path())
    entry = _existing(target).get(args.name)
    if entry is None:
        raise CatalogError(
            f"{target} has no dataset {args.name!r}: register its train split first (open-vlm data add "
            f"{args.name} URLS... --modality ...), then add --split {args.split}"
        )
    if args.split in entry.splits and not args.replace:
        raise CatalogError(f"dataset {args.name!r} already has a split {args.split!r} (--replace to overwrite it)")
    if args.modality and args.modality != entry.modality:
        raise CatalogError(f"--modality {args.modality} contradicts dataset {args.name!r} ({entry.modality})")
    patterns = [_absolute(u) for u in args.urls]
    manifest = _absolute(args.manifest) if args.manifest else None
    folder = posixpath.dirname(expand_urls(patterns)[0])
    if manifest is None and folder == posixpath.dirname(expand_urls(entry.urls)[0]):  # beside the train shards:
        manifest = posixpath.join(folder, f"manifest.{args.split}.json")  # not over their manifest.json
    split = {"urls": patterns, **({"manifest": manifest} if manifest else {})}
    entry.splits[args.split] = split
    view = entry.for_split(args.split)
    check_shards("URLS", patterns)
    urls = expand_urls(patterns)
    _warn_on_misfit(args.name, urls[0], entry.modality)
    print(f"counting samples of {len(urls)} shard(s)...", file=sys.stderr)
    manifest = write_manifest(urls, view.manifest_path())
    split["version"] = manifest_version(manifest)
    append_entry(target, entry, replace=True)
    print(
        f"registered {entry.name} split {args.split}: {len(urls)} shard(s), {manifest.num_samples} samples, "
        f"version {split['version']}; manifest {view.manifest_path()}; catalog {target}"
    )
    return 0


def _warn_on_misfit(name: str, url: str, modality: str) -> None:
    """Warn (the dataset is still registered) when the first shard's samples do not decode as `modality`."""
    probe = probe_shard(url, modality)
    problem = probe.problem()
    if problem:
        print(f"warning: {name}: {problem}; {misfit_fix(probe, '--modality', 'URLS')}", file=sys.stderr)


def _existing(path: str) -> dict[str, DatasetEntry]:
    try:
        return read_catalog_file(path)
    except CatalogError:  # missing (created by the add) or bad: append_entry decides
        return {}


ACTIONS = {"list": _list, "show": _show, "verify": _verify, "add": _add}


def main(argv: list[str]) -> int:
    """Run one `open-vlm data` action; `CatalogError` is a `ConfigError` (exit 2, one line via the CLI wrapper)."""
    if argv[:1] == ["bench"]:
        from open_vlm.data.bench import main as bench_main

        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    apply_process_env(load_env_config())
    return ACTIONS[args.action](args)
