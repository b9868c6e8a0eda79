#!/usr/bin/env python
"""Write augmented copies of a catalog dataset as new shards (+ manifest.json) and register them as a new version.

    python tools/augment_shards.py coco_captions --recipe strong --copies 2 --out s3://bucket/coco-aug
    python tools/augment_shards.py demo_shapes --augment '{crop_scale: [0.6, 1.0], color_jitter: 0.3}' \\
        --out data/demo-aug --name demo_shapes_aug --catalog my-datasets.yaml

The recipe is a built-in one (light, strong), one of a run config's `data.augment` (`--config RUN.yaml`), or
settings given with `--augment` (the keys of a source's `augment`). Copy c of sample j is augmented with the
seed of (--seed, j, c), so the same command writes the same bytes. The new entry (default: the dataset's own
name, i.e. a new version of it, in the user catalog or --catalog) keeps the modality, tasks and description and
records the recipe, seed, copies and the dataset / split / version it came from under `augment`.
Exit status: 0 written, 1 unreadable data, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _settings(args: argparse.Namespace):
    """The recipe's settings from --recipe (built-in or --config's data.augment) or --augment."""
    import draccus
    import yaml

    from open_vlm.config.load import decoding_error, read_yaml
    from open_vlm.config.schema import AugmentConfig
    from open_vlm.data.augment import resolve
    from open_vlm.errors import ConfigError

    if bool(args.recipe) == bool(args.augment):
        raise ConfigError("give exactly one of --recipe NAME or --augment '{key: value, ...}'")
    recipes = {}
    if args.config:
        named = (read_yaml(args.config).get("data") or {}).get("augment") or {}
        for name, values in named.items():
            try:
                recipes[name] = draccus.decode(AugmentConfig, values)
            except draccus.utils.DecodingError as err:
                raise decoding_error(err, f"{args.config}: data.augment.{name}") from err
    if args.recipe:
        return resolve(AugmentConfig(recipe=args.recipe), recipes, "--recipe")
    values = yaml.safe_load(args.augment)
    if not isinstance(values, dict):
        raise ConfigError(f"--augment: expected a mapping of augment settings, got {args.augment!r}")
    try:
        return resolve(draccus.decode(AugmentConfig, values), recipes, "--augment")
    except draccus.utils.DecodingError as err:
        raise decoding_error(err, "--augment") from err


def _refuse_the_source_folder(out: str, source) -> None:
    """The copies' manifest.json must not replace the dataset's own (its counts and version would be lost)."""
    import posixpath

    from open_vlm.data.shards import expand_urls
    from open_vlm.errors import ConfigError

    def folder(url: str) -> str:
        return url.rstrip("/") if "://" in url else os.path.realpath(url)

    first = expand_urls(source.urls)[0]
    own = {folder(posixpath.dirname(first))}
    if getattr(source, "manifest", None):
        own.add(folder(posixpath.dirname(source.manifest)))
    if folder(out) in own:
        raise ConfigError(
            f"--out {out} is where the dataset's own shards and manifest.json are: the copies' manifest would replace "
            "it; write them to another folder"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a catalog dataset name")
    parser.add_argument("--out", required=True, help="output folder (local or s3://)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--recipe", help="light, strong, or a name in --config's data.augment")
    parser.add_argument("--augment", help="augment settings as YAML/JSON: '{crop_scale: [0.5, 1.0], flip: true}'")
    parser.add_argument("--config", help="a run config whose data.augment recipes --recipe may name")
    parser.add_argument("--copies", type=int, default=1, help="augmented copies of every sample (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="catalog name of the result (default: the dataset's: a new version)")
    parser.add_argument("--catalog", help="catalog file to read too and to write (default: the user catalog)")
    args = parser.parse_args(argv)

    from open_vlm.config.env import apply_process_env, load_env_config
    from open_vlm.data.augment import describe
    from open_vlm.data.augment_offline import augment_shards, augmented_entry
    from open_vlm.data.catalog import append_entry, load_catalog, user_catalog_path
    from open_vlm.errors import ConfigError

    apply_process_env(load_env_config())
    if args.copies < 1:
        raise ConfigError(f"--copies: {args.copies} is out of range (it must be >= 1)")
    settings = _settings(args)
    if settings is None:
        raise ConfigError("the recipe changes nothing: give crop_scale, flip, color_jitter, hue, noise_std or policy")
    catalog = load_catalog([args.catalog] if args.catalog and Path(args.catalog).exists() else [])
    source = catalog.get(args.dataset).for_split(args.split, "--split")
    if source.modality not in ("image_text", "pretokenized"):
        raise ConfigError(f"{args.dataset}: modality {source.modality} has no images to augment")
    print(f"augmenting {args.dataset} ({args.split}) x{args.copies}: {describe(settings)}", file=sys.stderr)
    out = args.out if "://" in args.out else os.path.abspath(args.out)  # the catalog works from any directory
    _refuse_the_source_folder(out, source)
    copies = augment_shards(source.urls, settings, out, seed=args.seed, copies=args.copies)
    name = args.name or args.dataset
    entry = augmented_entry(name, source, args.split, copies, settings, args.seed, args.copies)
    target = args.catalog or str(user_catalog_path())
    append_entry(target, entry, replace=True)
    print(
        f"registered {name}: {len(copies.urls)} shard(s), {copies.manifest.num_samples} samples, version "
        f"{entry.version} (from {args.dataset} {args.split} {entry.augment['from']['version']}); catalog {target}"
    )
    return 0


if __name__ == "__main__":
    from open_vlm.errors import run_main

    sys.exit(run_main(main))
