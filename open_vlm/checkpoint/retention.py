"""Which checkpoints stay: pruning to `keep_last` by commit order (never the one resumed from), and setting the
checkpoints of an abandoned timeline aside. Mixed into `Checkpointer` (which provides `fs`, `root`, `directory`,
`keep_last`, `protected` and `list_complete`)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import fsspec

from open_vlm.checkpoint.files import fsync_dir, read_bytes, write_bytes
from open_vlm.checkpoint.verify import MARKER
from open_vlm.storage import is_remote

log = logging.getLogger(__name__)

ASIDE = "abandoned"  # where a rollback moves the checkpoints of the timeline it leaves
STEP_DIR = re.compile(r"^step_(\d+)$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def canonical(url: str) -> tuple:
    """One spelling per location (`a/./b/`, symlinks, `file://`): for comparing checkpoint URLs."""
    fs, path = fsspec.core.url_to_fs(url)
    path = os.path.realpath(path) if not is_remote(url) else path
    return (str(fs.protocol), path.rstrip("/"))


class Retention:
    """Pruning and setting aside, for `Checkpointer`."""

    # --- retention -----------------------------------------------------------------------------------
    def commit_time(self, url: str) -> float:
        """When a checkpoint was committed (0 for markers older than the commit time)."""
        try:
            return float(json.loads(read_bytes(f"{url}/{MARKER}")).get("committed_at", 0.0))
        except (ValueError, AttributeError):
            return 0.0

    def prune(self) -> None:
        """Keep the `keep_last` most recently committed checkpoints (and the protected one); rank 0."""
        if self.keep_last > 0:
            complete = self.list_complete()
            by_commit = sorted(complete, key=lambda su: (self.commit_time(su[1]), su[0]))
            for _, url in by_commit[: -self.keep_last]:
                if self.protected is None or canonical(url) != canonical(self.protected):
                    self._delete(url)
        if not is_remote(self.directory):  # leftovers of killed saves
            for entry in Path(self.root).glob(".step_*.partial-*"):
                shutil.rmtree(entry, ignore_errors=True)
        else:  # remote saves are written in place: a step folder without its marker is a failed or killed save
            for entry in self.fs.ls(self.root, detail=False):
                entry = entry.rstrip("/")
                if STEP_DIR.match(entry.split("/")[-1]) and not self.fs.exists(f"{entry}/{MARKER}"):
                    self.fs.rm(entry, recursive=True)
                    log.info("removed the leftovers of an uncommitted save: %s", self._url(entry.split("/")[-1]))

    def _delete(self, url: str) -> None:
        """Uncommit first, so that a kill mid-delete never leaves a COMPLETE checkpoint with files missing."""
        fs, path = fsspec.core.url_to_fs(url)
        fs.rm(f"{path}/{MARKER}")
        if not is_remote(url):
            fsync_dir(path)
        fs.rm(path, recursive=True)
        log.info("pruned checkpoint %s", url)

    def set_aside_newer(self, step: int, resumed: str | None = None) -> list[str]:
        """Move committed checkpoints of another timeline (past `step`, or at it but not `resumed`) aside; rank 0."""
        # The saves of this run must neither meet them (a committed step is never rewritten) nor be pruned for
        # them, and `resume latest` must not go back to them; they stay in `<dir>/abandoned/` for inspection.
        moved = []
        for later, url in self.list_complete():
            if later < step or (later == step and (resumed is None or canonical(url) == canonical(resumed))):
                continue
            src = f"{self.root}/{step_name(later)}"
            dest = f"{self.root}/{ASIDE}/{step_name(later)}-{time.strftime('%Y%m%d-%H%M%S')}"
            marker = read_bytes(f"{self._url(step_name(later))}/{MARKER}")  # a URL: `src` has no scheme
            self.fs.rm(f"{src}/{MARKER}")  # uncommitted first: a half-finished move is never a checkpoint
            if is_remote(self.directory):
                self._move_remote(src, dest)
            else:
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.replace(src, dest)
                fsync_dir(self.root)
            write_bytes(f"{self.directory}/{ASIDE}/{dest.rsplit('/', 1)[1]}/{MARKER}", marker)
            moved.append(url)
        if moved:
            log.warning(
                "starting at step %d: moved the later checkpoints %s aside to %s/%s (another timeline)",
                step,
                ", ".join(u.rsplit("/", 1)[1] for u in moved),
                self.directory,
                ASIDE,
            )
        return moved

    def _move_remote(self, src: str, dest: str) -> None:
        """Copy every object under `src` to `dest`, then delete `src` (object stores have no rename)."""
        # File by file: s3fs's recursive `mv` also copies the folder placeholders it lists, which S3 refuses.
        self.fs.invalidate_cache()
        for path in self.fs.find(src):
            self.fs.copy(path, f"{dest}/{path[len(src) :].lstrip('/')}")
        self.fs.rm(src, recursive=True)
