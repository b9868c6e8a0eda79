"""Load a `RunConfig`: environment defaults < YAML file < `--section.key value` CLI overrides (via draccus).

Unknown keys, ill-typed values and out-of-range numbers (`validate.check_values`) raise `ConfigError` (exit
status 2) naming the key; the entry point's wrapper (`open_vlm.errors.run_main`) prints it as one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import json
import os
import re
import tempfile
import typing
from typing import Any

import draccus
import yaml

from open_vlm.config import schema
from open_vlm.config.env import EnvConfig, apply_process_env, load_env_config, run_defaults
from open_vlm.config.schema import CHOICES, RunConfig, SourceConfig, data_task
from open_vlm.config.validate import check_values, value_at
from open_vlm.data.catalog import resolve_sources
from open_vlm.errors import ConfigError
from open_vlm.names import did_you_mean
from open_vlm.storage import read_yaml_mapping


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds directly, or the element dataclass of a `list[...]` field."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp)
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def valid_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts (sections and leaves)."""
    keys = []
    for name, tp in _field_types(cls).items():
        key = prefix + name
        keys.append(key)
        inner = _dataclass_of(tp)
        if inner is not None and typing.get_origin(tp) is not list:
            keys.extend(valid_keys(inner, key + "."))
    return keys


# Names other trainers (HF Trainer, open_lm, open_clip) use for our keys: the nearest key by meaning.
ALIASES = {
    "learning_rate": "lr",
    "steps": "max_steps",
    "total_steps": "max_steps",
    "num_steps": "max_steps",
    "warmup": "warmup_steps",
    "wd": "weight_decay",
    "workers": "num_workers",
    "bs": "batch_size",
    "per_device_batch_size": "batch_size",
    "grad_accum": "accum_steps",
    "gradient_accumulation_steps": "accum_steps",
    "grad_clip_norm": "grad_clip",
    "save_every": "every_steps",
    "log_every": "every_steps",
}


# Keys users write that are not Python identifiers: rewritten before validation.
RENAMES = {"checkpoint.async": "checkpoint.async_save"}


def _augment_shorthand(sources: object) -> None:
    """`augment: NAME` on a source means `augment: {recipe: NAME}`."""
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and isinstance(source.get("augment"), str):
            source["augment"] = {"recipe": source["augment"]}


def _shorthands(values: dict) -> None:
    for section in ("data", "eval"):
        if isinstance(values.get(section), dict):
            _augment_shorthand(values[section].get("sources"))


def _apply_renames(values: dict, overrides: list[str]) -> list[str]:
    for old, new in RENAMES.items():
        section, leaf = old.split(".")
        if isinstance(values.get(section), dict) and leaf in values[section]:
            values[section][new.split(".")[1]] = values[section].pop(leaf)
    out = []
    for arg in overrides:
        for old, new in RENAMES.items():
            if arg == f"--{old}" or arg.startswith(f"--{old}="):
                arg = arg.replace(f"--{old}", f"--{new}", 1)
        out.append(arg)
    return out


def _unknown(key: str, candidates: list[str]) -> ConfigError:
    section, _, leaf = key.rpartition(".")
    alias = f"{section}.{ALIASES[leaf]}" if section and leaf in ALIASES else ALIASES.get(leaf)
    if alias in candidates:
        close = [alias]
    else:
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def check_keys(values: dict, cls: type = RunConfig, prefix: str = "") -> None:
    """Raise `ConfigError` for the first key in a nested dict that `cls` does not have."""
    types = _field_types(cls)
    for name, value in values.items():
        key = prefix + str(name)
        if name not in types:
            raise _unknown(key, [prefix + n for n in types] + valid_keys(RunConfig))
        inner = _dataclass_of(types[name])
        if inner is None:
            continue
        if typing.get_origin(types[name]) is list and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    check_keys(item, inner, f"{key}[{i}].")
        elif isinstance(value, dict):
            check_keys(value, inner, key + ".")


def read_yaml(path: str) -> dict:
    """Read a YAML config from a local path or fsspec URL."""
    try:
        return read_yaml_mapping(path)
    except FileNotFoundError as err:
        raise ConfigError(f"config file not found: {path}") from err
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def split_args(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` out of argv; the rest are `--section.key value` overrides."""
    config_path, rest, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            config_path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config_path, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    return config_path, rest


def check_override_keys(overrides: list[str]) -> None:
    keys = valid_keys()
    for arg in overrides:
        if arg in ("-h", "--help"):
            continue
        if arg.startswith("--"):
            key = arg[2:].split("=", 1)[0]
            if key not in keys:
                raise _unknown(key, keys)


def _check_choices(cfg: RunConfig) -> None:
    for key, allowed in CHOICES.items():
        value = value_at(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {list(allowed)}, got {value!r}")
    for i, source in enumerate(cfg.data.sources):
        if not source.urls:
            raise ConfigError(f"data.sources[{i}].urls: at least one shard URL is needed")
        if not source.name:
            source.name = f"source{i}"
        if isinstance(source.urls, str):
            source.urls = [source.urls]


# Sections each command does not read: setting keys there is allowed (one file serves several commands)
# but worth a warning, since it changes nothing.
IGNORED_SECTIONS = {
    "train": ("extract",),
    "eval": ("optim", "extract"),
    "extract": ("optim", "checkpoint", "eval"),
}


def given_keys(argv: list[str]) -> set[str]:
    """The `section.key`s the config file or the command line set (a default is not given, an explicit 0 is)."""
    config_path, overrides = split_args(argv)
    values = read_yaml(config_path) if config_path else {}
    given = {f"{section}.{key}" for section, body in values.items() if isinstance(body, dict) for key in body}
    return given | {RENAMES.get(k, k) for k in (a[2:].split("=", 1)[0] for a in overrides if a.startswith("--"))}


def ignored_keys(argv: list[str], command: str) -> list[str]:
    """The keys given in the config file or on the command line that `command` does not read."""
    skip = IGNORED_SECTIONS.get(command, ())
    return sorted({key for key in given_keys(argv) if key.split(".", 1)[0] in skip})


def load_run_config(argv: list[str], env: EnvConfig | None = None) -> RunConfig:
    """Resolve the run config from `--config FILE` and overrides in `argv`."""
    env = load_env_config() if env is None else env
    apply_process_env(env)
    config_path, overrides = split_args(argv)
    values = read_yaml(config_path) if config_path else {}
    overrides = _apply_renames(values, overrides)
    _shorthands(values)
    check_keys(values)
    check_override_keys(overrides)
    overrides = _normalise_overrides(overrides)
    merged = _deep_merge(run_defaults(env), values)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as tmp:
        yaml.safe_dump(merged, tmp)
    try:
        cfg = _parse(tmp.name, overrides)
    finally:
        os.unlink(tmp.name)
    _resolve_datasets(cfg)
    _check_choices(cfg)
    check_values(cfg)
    return cfg


def _parse(config_path: str, overrides: list[str]) -> RunConfig:
    """draccus over the merged YAML; its argparse errors (a missing value, a stray word) become one line, not the
    ~70-line usage it prints."""
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            return draccus.parse(config_class=RunConfig, config_path=config_path, args=overrides)
    except draccus.utils.DecodingError as err:
        raise decoding_error(err) from err
    except SystemExit as err:
        if not err.code:  # --help printed the usage (to stdout), as asked
            raise
        lines = [line for line in usage.getvalue().splitlines() if "error: " in line]
        why = lines[-1].split("error: ", 1)[1] if lines else "cannot parse the overrides"
        raise ConfigError(f"bad override: {why}; give each as --section.key VALUE (or --section.key=VALUE)") from None


def _resolve_datasets(cfg: RunConfig) -> None:
    """Fill `dataset:` sources (of `data.sources` and `eval.sources`) from the catalog and check each source fits
    `data.task` (reads no shards). Its `CatalogError` is a `ConfigError`."""
    resolve_sources(cfg.data, task=data_task(cfg))
    if cfg.eval.sources:
        held_out = dataclasses.replace(cfg.data, sources=cfg.eval.sources)
        resolve_sources(held_out, task=data_task(cfg), section="eval.sources")


def _declared_type(key: str) -> Any:
    """The declared type of a dotted key (`train.seed` -> int), or None when there is no such key."""
    cls: Any = RunConfig
    tp: Any = None
    for part in key.split("."):
        if cls is None or not dataclasses.is_dataclass(cls):
            return None
        tp = _field_types(cls).get(part.split("[")[0])
        cls = _dataclass_of(tp) if tp is not None else None
    return tp


_NOT_VALID = re.compile(r"The fields (.+) are not valid for (\w+)")


def decoding_error(err: draccus.utils.DecodingError, where: str = "") -> ConfigError:
    """draccus's decoding error as one line. An unknown key inside a list or mapping (a source's, a recipe's),
    which the top-level key check cannot see, is named where it is, with the closest valid one."""
    match = _NOT_VALID.match(err.message)
    cls = getattr(schema, match[2], None) if match else None
    if match and dataclasses.is_dataclass(cls):
        name = re.findall(r"`([^`]+)`", match[1])[0]
        close = difflib.get_close_matches(name, [f.name for f in dataclasses.fields(cls)], n=1)
        if where:
            return ConfigError(f"{where}: unknown key '{name}'{did_you_mean(name, close)}")
        hint = f"; did you mean '{_key_text([*err.key_path, close[0]])}'?" if close else ""
        return ConfigError(f"unknown config key '{_key_text([*err.key_path, name])}'{hint}")
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}{err} (expected type: {_expected_type(str(err))})")


def _key_text(path) -> str:
    """('data', 'sources', '0', 'weight') → data.sources[0].weight"""
    out = ""
    for part in map(str, path):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _expected_type(message: str) -> str:
    """Best-effort: the declared type of the key a draccus error names (`train.seed`: ...)."""
    tp = _declared_type(message[1:].split("`", 1)[0]) if message.startswith("`") else None
    return "see the config schema" if tp is None else getattr(tp, "__name__", str(tp))


def _override_value(key: str, value: str) -> str:
    """A bare value for a list-of-strings key becomes a one-item list (`--extract.urls x.tar`); a value that
    looks like a YAML list or mapping must parse (an unquoted `{0..9}` does not)."""
    if value.lstrip().startswith(("[", "{")):
        try:
            yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "invalid YAML"
            raise ConfigError(
                f"{key}: cannot read {value!r} as YAML ({problem}); quote each item, e.g. --{key} '[\"x-{{0..9}}.tar\"]'"
            ) from err
        if key in ("data.sources", "eval.sources"):
            sources = yaml.safe_load(value)
            _augment_shorthand(sources)
            return json.dumps(sources)
        return value
    return json.dumps([value]) if _declared_type(key) == list[str] else value


def _normalise_overrides(overrides: list[str]) -> list[str]:
    """`--key value` / `--key=value` overrides with each value passed through `_override_value`."""
    out, key = [], None
    for arg in overrides:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            out.append(f"--{name}={_override_value(name, value)}" if eq else arg)
            key = None if eq else name
        else:
            out.append(_override_value(key, arg) if key else arg)
            key = None
    return out


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what run folders store)."""
    buf = io.StringIO()
    draccus.dump(cfg, buf)
    return buf.getvalue()


def config_from_yaml_text(text: str) -> RunConfig:
    """Rebuild a `RunConfig` from a dumped `config.yaml` (checkpoints store one)."""
    values = yaml.safe_load(text) or {}
    check_keys(values)
    return draccus.decode(RunConfig, values)


__all__ = [
    "ConfigError",
    "RunConfig",
    "SourceConfig",
    "check_keys",
    "config_from_yaml_text",
    "dump_config",
    "load_run_config",
    "valid_keys",
]
