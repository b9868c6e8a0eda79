"""Experiment trackers behind one small interface, looked up by name (`logging.trackers`).

A tracker is opened once per invocation on rank 0 (`open_trackers`) with a `TrackedRun`: the resolved config,
the run folder, the job (`train` or `eval`), the step it starts at and the data sources it reads. It then gets
metric records, files, images and tags, and is closed with the run's status. Heavy packages (mlflow,
tensorboard, wandb) are imported by the tracker that needs them, when it is opened.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from open_vlm.config.schema import LoggingConfig, RunConfig, SourceConfig
from open_vlm.errors import ConfigError
from open_vlm.names import did_you_mean

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataInput:
    """One data source a run reads: its catalog dataset (or its own name), split and version."""

    name: str  # the source's name in the run
    dataset: str | None  # the catalog name, None for inline urls
    split: str
    version: str  # 12 hex digits over the manifest (data/version.py)
    urls: tuple[str, ...]
    num_samples: int
    num_shards: int
    weight: float
    modality: str
    context: str = "training"  # training | evaluation
    catalog_file: str | None = None


@dataclasses.dataclass
class TrackedRun:
    """What a tracker is told when it opens."""

    cfg: RunConfig
    folder: Path
    job: str = "train"  # train | eval
    step: int = 0  # the step the invocation starts at (> 0: a resumed run)
    inputs: list[DataInput] = dataclasses.field(default_factory=list)

    @property
    def resumed(self) -> bool:
        return self.step > 0


class Tracker:
    """Where metrics go; every method is optional (the base does nothing)."""

    requires: tuple[str, ...] = ()  # importable modules it needs (`pip install 'open_vlm[tracking]'`)
    logs_evaluations = True  # `open-vlm eval` reports to it (wandb has its own report path)

    def __init__(self, run: TrackedRun):
        self.run = run

    @classmethod
    def preflight(cls) -> None:
        """Fail fast, before a run builds its model, when the tracker cannot start (a bad or unreachable endpoint):
        `ConfigError` for a setting to fix, `DataError` for a service that does not answer."""

    def log_metrics(self, step: int, record: dict) -> None:
        """One logged step: `record` holds numbers (and `step`)."""

    def log_file(self, path: Path, folder: str = "") -> None:
        """Keep a file with the run (an artifact)."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """An image (a PNG plot) at `step`."""

    def set_tag(self, key: str, value: str) -> None:
        """A run-level label (the latest checkpoint URI)."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run: FINISHED or FAILED."""


_TRACKERS: dict[str, type[Tracker]] = {}
PAUSE_S = 300.0  # how long a tracker whose call failed is left alone


def register_tracker(name: str) -> Callable[[type[Tracker]], type[Tracker]]:
    """Class decorator: `@register_tracker("mlflow")` makes `logging.trackers: [mlflow]` open it."""

    def add(cls: type[Tracker]) -> type[Tracker]:
        _TRACKERS[name] = cls
        return cls

    return add


def data_inputs(configs: list[SourceConfig], loader, context: str = "training") -> list[DataInput]:
    """The sources of a built `ShardLoader` with their config (catalog name, split) and version."""
    return [
        DataInput(
            name=src.name,
            dataset=config.dataset,
            split=config.split or "train",
            version=version,
            urls=tuple(config.urls),
            num_samples=src.manifest.num_samples,
            num_shards=len(src.manifest),
            weight=src.weight,
            modality=src.modality,
            context=context,
            catalog_file=config.catalog_file,
        )
        for config, src, version in zip(configs, loader.sources, loader.versions)
    ]


def tracker_class(name: str) -> type[Tracker]:
    return _TRACKERS[name]


def tracker_names() -> list[str]:
    return sorted(_TRACKERS)


def selected_trackers(logging_cfg: LoggingConfig) -> list[str]:
    """`logging.trackers`, plus wandb when `logging.wandb.mode` is online/offline (the older switch)."""
    names = list(dict.fromkeys(logging_cfg.trackers))
    if logging_cfg.wandb.mode != "disabled" and "wandb" not in names:
        names.append("wandb")
    return names


def check_trackers(logging_cfg: LoggingConfig) -> None:
    """`ConfigError` for an unknown tracker name or one whose package is not installed."""
    for name in logging_cfg.trackers:
        if name not in _TRACKERS:
            raise ConfigError(
                f"logging.trackers: unknown tracker '{name}'{did_you_mean(name, tracker_names())} "
                f"(known: {tracker_names()})"
            )
        missing = [m for m in _TRACKERS[name].requires if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"logging.trackers: {name} needs {', '.join(missing)}, which is not installed: "
                "pip install 'open_vlm[tracking]', or drop it from logging.trackers"
            )


def preflight_trackers(logging_cfg: LoggingConfig) -> None:
    """Every selected tracker's `preflight` (on the process that will open them)."""
    for name in selected_trackers(logging_cfg):
        _TRACKERS[name].preflight()


def open_trackers(run: TrackedRun, names: Iterable[str]) -> list[Guarded]:
    """Open the named trackers for `run` (call on rank 0 only). One that cannot open stops the invocation; once
    open, their failures never do (`Guarded`)."""
    opened: list[Guarded] = []
    try:
        for name in names:
            opened.append(Guarded(name, _TRACKERS[name](run)))
    except Exception:  # the ones already open end as failed, not left running on their server
        for tracker in opened:
            tracker.close("FAILED")
        raise
    return opened


class Guarded:
    """A tracker whose failures do not stop a run: a call that raises (a tracking server gone, a full disk) is
    logged once, and the tracker is left alone for `pause_s` seconds, so that a dead server costs the run one
    call's retries, not some at every step. Then it is tried again. Records it misses are only in metrics.jsonl."""

    def __init__(self, name: str, tracker: Tracker, pause_s: float = PAUSE_S):
        self.name, self.tracker, self.pause_s = name, tracker, pause_s
        self.paused_until = 0.0
        self.missed = 0

    def _call(self, what: str, fn: Callable[..., None], *args) -> None:
        if time.monotonic() < self.paused_until:
            self.missed += 1
            return
        try:
            fn(*args)
        except Exception as err:  # whatever the tracker's client raises
            self.paused_until = time.monotonic() + self.pause_s
            self.missed += 1
            log.warning(
                "tracker %s: %s failed (%s: %s); the run goes on, and %s is left alone for %.0f s",
                self.name, what, type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "", self.name,
                self.pause_s,
            )  # fmt: skip
            return
        if self.missed:
            log.warning("tracker %s: working again, after %d missed calls", self.name, self.missed)
            self.missed = 0

    def log_metrics(self, step: int, record: dict) -> None:
        self._call(f"logging step {step}", self.tracker.log_metrics, step, record)

    def log_file(self, path: Path, folder: str = "") -> None:
        self._call(f"keeping {path.name}", self.tracker.log_file, path, folder)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self._call(f"logging image {tag}", self.tracker.log_image, tag, path, step)

    def set_tag(self, key: str, value: str) -> None:
        self._call(f"setting tag {key}", self.tracker.set_tag, key, value)

    def close(self, status: str = "FINISHED") -> None:
        self.paused_until = 0.0  # a last try: the run's status matters
        self._call(f"ending the run ({status})", self.tracker.close, status)


def flatten(value: object, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys (`data.sources.0.urls`) with string values (lists of scalars as JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{i}."))
        return out
    text = json.dumps(value) if isinstance(value, list) else ("" if value is None else str(value))
    return {prefix.rstrip("."): text}


def numbers(record: dict) -> dict[str, float]:
    """The numeric fields of a record (booleans as 0/1), without `step`."""
    out = {}
    for key, value in record.items():
        if key == "step" or not isinstance(value, int | float):
            continue
        out[key] = float(value)
    return out
