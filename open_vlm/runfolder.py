"""Run folders: `<output_dir>/<project>/<name>/` with config.yaml, one log per invocation, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

LOG_FORMAT = "%(asctime)s %(levelname)s [rank%(rank)s] %(name)s: %(message)s"


def run_dir(output_dir: str, project: str, name: str) -> Path:
    return Path(output_dir) / project / name


def log_file_name(project: str, command: str, when: float | None = None) -> str:
    """`<project>-<command>-<YYYYmmdd-HHMMSS>.log`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when if when is not None else time.time()))
    return f"{project}-{command}-{stamp}.log"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(
    folder: Path | None,
    project: str,
    command: str,
    level: str = "INFO",
    rank: int | None = None,
    all_ranks: bool = False,
) -> Path | None:
    """Console + per-invocation log file. Rank 0 logs at `level`; other ranks only warnings unless `all_ranks`."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    effective = getattr(logging, level.upper()) if (rank == 0 or all_ranks) else logging.WARNING
    root.setLevel(effective)
    formatter = logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S")
    console = logging.StreamHandler()
    handlers: list[logging.Handler] = [console]
    path = None
    if folder is not None and (rank == 0 or all_ranks):
        folder.mkdir(parents=True, exist_ok=True)
        name = log_file_name(project, command)
        if rank != 0:
            name = name.replace(".log", f".rank{rank}.log")
        path = folder / name
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RankFilter(rank))
        root.addHandler(handler)
    # Chatty third-party loggers stay at WARNING.
    for noisy in ("urllib3", "botocore", "s3fs", "fsspec", "PIL", "httpx", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


class MetricsWriter:
    """Appends one JSON object per logged step to `metrics.jsonl`."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (a resumed run rewrites the steps after its checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
