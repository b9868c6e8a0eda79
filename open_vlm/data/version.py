"""Dataset versions: a short stable hash of a manifest, recorded with the loader state to catch changed data."""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath

from open_vlm.data.manifest import ShardManifest

log = logging.getLogger(__name__)


class DataVersionError(ValueError):
    """Resuming on a source whose version differs from the one the checkpoint was taken on."""


def manifest_version(manifest: ShardManifest) -> str:
    """12 hex digits over each shard's file name, sample count, size and checksum (etag if none), in order."""
    # File names, not full URLs: a copy of the same shards elsewhere (disk -> S3, a FastFile mount) keeps its
    # version. The md5 checksum, not the etag: a multipart upload of the same bytes gets another etag.
    if manifest.version is not None:  # computed when the manifest's index was written
        return manifest.version
    digest = hashlib.sha256()
    etags = manifest.etags or [None] * len(manifest)
    columns = zip(manifest.urls, manifest.counts.tolist(), manifest.sizes.tolist(), manifest.checksums, etags)
    for url, count, size, checksum, etag in columns:
        digest.update(json.dumps([posixpath.basename(url), count, size, checksum or etag]).encode() + b"\n")
    return digest.hexdigest()[:12]


def check_versions(saved: dict, current: dict, allow_change: bool = False) -> None:
    """Raise `DataVersionError` for sources whose `versions` entry differs between two loader state headers.

    With `allow_change`, log a warning instead. States saved before versions were recorded pass (warned)."""
    if "versions" not in saved:
        log.warning("the data state records no dataset versions (older checkpoint): changed data goes unnoticed")
        return
    changed = [
        f"source {name!r}: version {old} in the checkpoint, {new} now"
        for name, old, new in zip(current["sources"], saved["versions"], current["versions"])
        if old != new
    ]
    if not changed:
        return
    what = "; ".join(changed)
    if allow_change:
        log.warning("data changed since the checkpoint (%s); resuming anyway (allow_data_change)", what)
        return
    raise DataVersionError(
        f"data changed since the checkpoint: {what}. Its shards or manifest differ, so the saved data position "
        "no longer names the same samples. Start a new run, or pass --checkpoint.allow_data_change true to "
        "resume on the new data anyway"
    )
