"""The environment config: per-user defaults (output root, S3 endpoint, wandb) that run configs override.

Precedence, lowest first: built-in defaults < `$XDG_CONFIG_HOME/open_vlm/config.yaml` <
`OPEN_VLM_*` environment variables < the run config file < CLI overrides.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from open_vlm.errors import ConfigError


@dataclass
class EnvConfig:
    output_root: str | None = None  # default for run.output_dir
    s3_endpoint: str | None = None  # S3-compatible endpoint URL (sets AWS_ENDPOINT_URL_S3: S3 calls only)
    wandb_project: str | None = None  # default for logging.wandb.project
    wandb_mode: str | None = None  # default for logging.wandb.mode


ENV_PREFIX = "OPEN_VLM_"


def user_config_path() -> Path:
    """The user's environment-config file under the XDG config dir."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "open_vlm" / "config.yaml"


def env_keys() -> list[str]:
    return [f.name for f in fields(EnvConfig)]


def _read_user_file() -> dict:
    path = user_config_path()
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    unknown = sorted(set(data) - set(env_keys()))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid keys: {env_keys()}")
    return data


def load_env_config() -> EnvConfig:
    """Resolve the environment config from the user file and `OPEN_VLM_*` variables."""
    values = _read_user_file()
    for key in env_keys():
        env_value = os.environ.get(ENV_PREFIX + key.upper())
        if env_value:
            values[key] = env_value
    return EnvConfig(**values)


def set_user_value(key: str, value: str) -> Path:
    """Write one key to the user file (`open-vlm config set`)."""
    if key not in env_keys():
        raise KeyError(key)
    path = user_config_path()
    data = _read_user_file()
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=True))
    return path


def describe() -> list[tuple[str, str | None, str]]:
    """(key, value, where it came from) for `open-vlm config show`."""
    from_file = _read_user_file()
    rows = []
    for key, value in asdict(load_env_config()).items():
        if os.environ.get(ENV_PREFIX + key.upper()):
            origin = f"env {ENV_PREFIX + key.upper()}"
        elif key in from_file:
            origin = str(user_config_path())
        else:
            origin = "default"
        rows.append((key, value, origin))
    return rows


def run_defaults(env: EnvConfig) -> dict:
    """The run-config values the environment config supplies (as a nested dict)."""
    defaults: dict = {}
    if env.output_root:
        defaults.setdefault("run", {})["output_dir"] = env.output_root
    wandb = {}
    if env.wandb_project:
        wandb["project"] = env.wandb_project
    if env.wandb_mode:
        wandb["mode"] = env.wandb_mode
    if wandb:
        defaults["logging"] = {"wandb": wandb}
    return defaults


def apply_process_env(env: EnvConfig) -> None:
    """Export settings that libraries read from the process environment (fsspec/s3fs, workers).

    The S3 endpoint goes to `AWS_ENDPOINT_URL_S3`, which botocore applies to S3 clients only: a MinIO setting must
    not send this process's other AWS calls (SageMaker, IAM, STS) there. An endpoint already exported wins."""
    if env.s3_endpoint and not (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")):
        os.environ["AWS_ENDPOINT_URL_S3"] = env.s3_endpoint
