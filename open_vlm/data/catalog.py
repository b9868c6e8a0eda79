"""The dataset catalog: named datasets (shards, modality, tasks, manifest) kept in YAML files.

Files are read in this order, a later definition of a name replacing an earlier one: the repo's
`configs/datasets/*.yaml` (sorted), the user's `$XDG_CONFIG_HOME/open_vlm/datasets.yaml`, then each of
`data.catalogs` (paths or fsspec URLs). A file maps names to entries:

    coco_captions:
      urls: ["s3://bucket/coco/coco-{000000..000099}.tar"]   # brace patterns; relative paths: from the cwd
      modality: image_text
      tasks: [captioning]                                     # see open_vlm/data/compat.py
      description: COCO 2017 train, one caption per sample
      manifest: s3://bucket/coco/manifest.json                # optional: default manifest.json beside the shards
      version: 3f2a9c01be47                                   # written by `open-vlm data add`
      splits:                                                 # optional: held-out URL sets (`urls` is train)
        val: {urls: ["s3://bucket/coco/val-{000000..000004}.tar"], version: 91c0ffee1234}

A source picks a split with `{dataset: coco_captions, split: val}` (default train).
"""

from __future__ import annotations

import difflib
import logging
import posixpath
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import fsspec
import yaml

from open_vlm.config.env import user_config_path
from open_vlm.config.schema import DataConfig, SourceConfig, source_task
from open_vlm.data.compat import DATA_TASKS, fit_problem, mixing_problem, unknown_names
from open_vlm.data.shards import expand_urls
from open_vlm.errors import ConfigError
from open_vlm.names import did_you_mean
from open_vlm.storage import read_yaml_mapping

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLITS = ("train", "val", "test")  # `urls` is the train split; `splits` holds the others
SPLIT_KEYS = ("urls", "manifest", "version")


class CatalogError(ConfigError, ValueError):
    """A bad catalog file, an unknown dataset name or a dataset that does not fit the run (exit status 2)."""


@dataclass
class DatasetEntry:
    """One named dataset of the catalog."""

    name: str
    urls: list[str]
    modality: str = "image_text"
    tasks: list[str] = field(default_factory=list)
    description: str = ""
    manifest: str | None = None
    version: str | None = None  # the version when registered (`open-vlm data add`); the manifest is the truth
    splits: dict[str, dict] = field(default_factory=dict)  # val / test: {urls, manifest, version}
    augment: dict | None = None  # augmented copies (tools/augment_shards.py): the recipe and what they came from

    def for_split(self, split: str, where: str = "") -> DatasetEntry:
        """The entry as one split sees it: that split's urls, manifest and version (`train`: the entry itself)."""
        split = split or "train"
        if split not in SPLITS:
            raise CatalogError(f"{where or self.name}: unknown split {split!r}{did_you_mean(split, SPLITS)} ({SPLITS})")
        if split == "train":
            return self
        if split not in self.splits:
            have = ", ".join(["train", *self.splits])
            raise CatalogError(
                f"{where or self.name}: dataset {self.name!r} has no split {split!r} (it has: {have}); register it "
                f"with open-vlm data add {self.name} URLS... --split {split}"
            )
        values = self.splits[split]
        return replace(self, urls=list(values["urls"]), manifest=values.get("manifest"), version=values.get("version"))

    def manifest_path(self) -> str:
        """The manifest's location: `manifest`, or `manifest.json` beside the first shard."""
        return self.manifest or posixpath.join(posixpath.dirname(expand_urls(self.urls)[0]), "manifest.json")

    def to_yaml(self) -> dict:
        """The entry as stored in a catalog file (without its name, empty fields left out)."""
        return {k: v for k, v in asdict(self).items() if k != "name" and v not in (None, "", [], {})}


ENTRY_KEYS = [f.name for f in fields(DatasetEntry) if f.name != "name"]


def _url_list(urls: object, where: str) -> list[str]:
    urls = [urls] if isinstance(urls, str) else urls
    if not urls or not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise CatalogError(f"{where}: 'urls' must be a pattern or a list of patterns")
    return list(urls)


def parse_splits(splits: object, where: str) -> dict[str, dict]:
    """Check an entry's `splits`: val / test mappings of `urls` (+ optional `manifest`, `version`)."""
    if not isinstance(splits, dict):
        raise CatalogError(f"{where}: 'splits' must map {list(SPLITS[1:])} to {{urls: [...]}}")
    out = {}
    for split, values in splits.items():
        if split not in SPLITS[1:]:
            hint = " (the train split is the entry's own urls)" if split == "train" else did_you_mean(split, SPLITS)
            raise CatalogError(f"{where}: unknown split {split!r}{hint}; splits are {list(SPLITS[1:])}")
        if not isinstance(values, dict) or set(values) - set(SPLIT_KEYS):
            raise CatalogError(f"{where}: split {split!r} must be a mapping of {list(SPLIT_KEYS)}")
        out[split] = {**values, "urls": _url_list(values.get("urls"), f"{where}: split {split!r}")}
    return out


@dataclass
class Catalog:
    """The merged catalog: each name's entry and every file that defined it (the last one wins)."""

    entries: dict[str, DatasetEntry] = field(default_factory=dict)
    origins: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def origin(self, name: str) -> str:
        return self.origins[name][-1]

    def get(self, name: str) -> DatasetEntry:
        """The entry named `name`; `CatalogError` listing close matches when there is none."""
        if name in self.entries:
            return self.entries[name]
        close = difflib.get_close_matches(name, list(self.entries), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        files = ", ".join(self.files) or "none found"
        raise CatalogError(f"unknown dataset {name!r}{hint} (catalogs read: {files})")


def repo_catalog_dir() -> Path:
    """`configs/datasets/` of the repository this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "datasets"


def user_catalog_path() -> Path:
    """The user's catalog file, beside the environment config."""
    return user_config_path().parent / "datasets.yaml"


def catalog_files(extra: Sequence[str] = (), repo_dir: Path | None = None) -> list[str]:
    """The catalog files to read, lowest precedence first (repo, user, then `extra` in order)."""
    repo_dir = repo_catalog_dir() if repo_dir is None else repo_dir
    files = [str(p) for p in sorted(repo_dir.glob("*.yaml"))] if repo_dir.is_dir() else []
    if user_catalog_path().exists():
        files.append(str(user_catalog_path()))
    return files + list(extra)


def parse_entry(name: str, values: object, where: str) -> DatasetEntry:
    """Check one entry's keys and values; `where` names the file in errors."""
    if not NAME_PATTERN.match(str(name)):
        raise CatalogError(f"{where}: bad dataset name {name!r} (letters, digits, _ . -)")
    if not isinstance(values, dict):
        raise CatalogError(f"{where}: dataset {name!r}: expected a mapping of {ENTRY_KEYS}")
    for key in values:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise CatalogError(f"{where}: dataset {name!r}: unknown key '{key}'{hint}")
    urls = _url_list(values.get("urls"), f"{where}: dataset {name!r}")
    splits = parse_splits(values.get("splits") or {}, f"{where}: dataset {name!r}")
    tasks = values.get("tasks") or []
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    entry = DatasetEntry(name=str(name), **{**values, "urls": urls, "tasks": tasks, "splits": splits})
    problem = unknown_names(entry.modality, entry.tasks)
    if problem:
        raise CatalogError(f"{where}: dataset {name!r}: {problem}")
    return entry


def read_catalog_file(path: str) -> dict[str, DatasetEntry]:
    """The entries of one catalog file (local or fsspec URL); a missing file is an error."""
    try:
        data = read_yaml_mapping(path)
    except FileNotFoundError as err:
        raise CatalogError(f"catalog file not found: {path}") from err
    except ValueError as err:
        raise CatalogError(f"{err} (dataset names to entries)") from err
    return {str(name): parse_entry(name, values, path) for name, values in data.items()}


def load_catalog(extra: Sequence[str] = (), repo_dir: Path | None = None) -> Catalog:
    """Read and merge every catalog file (see the module docstring for the order)."""
    catalog = Catalog()
    for path in catalog_files(extra, repo_dir):
        catalog.files.append(path)
        for name, entry in read_catalog_file(path).items():
            if name in catalog.entries:
                log.debug("dataset %s: %s overrides %s", name, path, catalog.origin(name))
            catalog.entries[name] = entry
            catalog.origins.setdefault(name, []).append(path)
    return catalog


def append_entry(path: str, entry: DatasetEntry, replace: bool = False) -> None:
    """Add `entry` to a catalog file (created if missing); an existing name needs `replace`."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    text = fs.cat_file(fs_path).decode() if fs.exists(fs_path) else ""
    existing = (yaml.safe_load(text) or {}) if text else {}
    if entry.name in existing and not replace:
        raise CatalogError(f"{path} already has a dataset {entry.name!r} (--replace to overwrite it)")
    if entry.name in existing:  # rewritten whole: the file's comments are lost, its other entries kept
        existing[entry.name] = entry.to_yaml()
        text = yaml.safe_dump(existing, sort_keys=False)
    else:  # appended as text, so the comments of a hand-written file survive
        text = text + ("\n" if text and not text.endswith("\n") else "")
        text += yaml.safe_dump({entry.name: entry.to_yaml()}, sort_keys=False)
    if "://" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(path, "w") as f:
        f.write(text)


def _fill_from_catalog(source: SourceConfig, catalog: Catalog, where: str) -> list[str]:
    """Set a `dataset:` source's urls, modality and manifest from its entry (its split); returns the entry's tasks."""
    entry = catalog.get(source.dataset).for_split(source.split, f"{where}.split")
    if source.urls:
        raise CatalogError(f"{where}: give either dataset ({source.dataset!r}) or urls, not both")
    default_modality = SourceConfig.modality
    if source.modality not in (default_modality, entry.modality):
        raise CatalogError(
            f"{where}: modality {source.modality!r} contradicts dataset {entry.name!r} ({entry.modality}, "
            f"from {catalog.origin(entry.name)})"
        )
    origins = catalog.origins[entry.name]
    overrides = f" (overrides {', '.join(origins[:-1])})" if len(origins) > 1 else ""
    split = f" (split {source.split})" if source.split not in ("", "train") else ""
    log.info("%s: dataset %s%s from %s%s", where, entry.name, split, origins[-1], overrides)
    source.urls = list(entry.urls)
    source.modality = entry.modality
    source.manifest = source.manifest or entry.manifest
    source.name = source.name or entry.name
    source.catalog_file = origins[-1]
    return entry.tasks


def resolve_sources(
    data: DataConfig, repo_dir: Path | None = None, task: str | None = None, section: str = "data.sources"
) -> None:
    """Fill `dataset:` sources from the catalog, then check every source fits its task and that the sources can
    be batched as `data.mixing` says (`CatalogError`).

    `task` is the run's data task (`data.task`, or the model kind's own when that is empty); a source's own
    `task` overrides it."""
    task = task or data.task or "prefix_lm"  # callers without a run config: the default model's task

    def needs_lookup(source: SourceConfig) -> bool:  # a resolved config keeps what it recorded
        return bool(source.dataset) and not (source.catalog_file and source.urls)

    # Read only when a name needs looking up: a launched job has the resolved config, not the catalog files.
    wanted = any(needs_lookup(s) for s in data.sources)
    catalog = load_catalog(data.catalogs, repo_dir) if wanted else Catalog()
    for i, source in enumerate(data.sources):
        where = f"{section}[{i}]"
        if source.split and not source.dataset:
            raise CatalogError(f"{where}.split: only a catalog dataset has splits (give dataset: NAME, or drop split)")
        if source.task and source.task not in DATA_TASKS:
            raise CatalogError(f"{where}.task: expected one of {list(DATA_TASKS)}, got {source.task!r}")
        tasks = _fill_from_catalog(source, catalog, where) if needs_lookup(source) else []
        key = f"{where}.task" if source.task else "data.task"
        problem = fit_problem(source.modality, tasks, source_task(source, task), key)
        if problem:
            label = f"dataset {source.dataset!r}" if source.dataset else "source"
            raise CatalogError(f"{where}: {label} does not fit {key} {source_task(source, task)}: {problem}")
    problem = mixing_problem(data.mixing, [source_task(s, task) for s in data.sources])
    if problem:
        raise CatalogError(problem)


def sources_at_split(
    sources: list[SourceConfig], split: str, data: DataConfig, task: str, section: str = "eval.sources"
) -> list[SourceConfig]:
    """Copies of `sources` reading `split` of their catalog dataset (a source naming a split keeps its own)."""
    out = []
    for i, source in enumerate(sources):
        if not source.dataset:
            raise CatalogError(f"{section}[{i}]: split {split!r} needs a catalog dataset, this source gives urls")
        if source.split:
            out.append(source)
            continue
        fields_kept = {"name": source.name, "weight": source.weight, "modality": source.modality, "task": source.task}
        out.append(SourceConfig(dataset=source.dataset, split=split, **fields_kept))
    resolve_sources(replace(data, sources=out), task=task, section=section)
    return out
