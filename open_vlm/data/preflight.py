"""Before a run reads a source: do the first samples of its first shard hold what its modality needs?

The samples are decoded by the loader's own decoder (`decode.decode_sample`), so the check follows the decoder
as it changes. `check_first_shards` stops a run (`DataError`, exit 1) on a source none of whose first samples
decodes; `open-vlm data add` runs the same probe and warns.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from open_vlm.config.schema import SourceConfig
from open_vlm.errors import DataError

log = logging.getLogger(__name__)

PROBE_SAMPLES = 8  # samples read from the first shard
PROBE_IMAGE_SIZE = 8  # images are decoded this small: enough to know they decode


@dataclass
class ShardProbe:
    """What the first samples of one shard held and how they decoded as `modality`."""

    url: str
    modality: str
    samples: list[dict] = field(default_factory=list)
    decoded: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # decoder messages of the samples that failed
    read_error: str | None = None

    @property
    def members(self) -> list[str]:
        """The member suffixes seen (`jpg`, `txt`, `cls`, ...)."""
        return sorted({suffix for sample in self.samples for suffix in sample if not suffix.startswith("__")})

    def fitting_modalities(self) -> list[str]:
        """Other modalities whose decoder takes every probed sample."""
        from open_vlm.data.decode import DECODERS

        return [m for m in DECODERS if m != self.modality and all(_decodes(s, m) for s in self.samples)]

    def problem(self) -> str | None:
        """Why the shard cannot feed `modality`, or None (also when nothing could be read: the loader decides)."""
        if self.decoded or not self.samples:
            return None
        reason = self.reasons.most_common(1)[0][0]
        seen = ", ".join(self.members) or "none"
        return (
            f"none of the first {len(self.samples)} samples of {self.url} decodes as modality {self.modality} "
            f"({reason}); members seen: {seen}"
        )


def _decodes(sample: dict, modality: str) -> bool:
    from open_vlm.data.decode import decode_sample

    try:
        decode_sample(sample, modality, PROBE_IMAGE_SIZE)
    except Exception:  # another modality's decoder may fail in any way on these members: it does not fit
        return False
    return True


def probe_shard(url: str, modality: str, limit: int = PROBE_SAMPLES) -> ShardProbe:
    """Read and decode the first `limit` samples of the shard at `url` as `modality`."""
    from open_vlm.data.decode import SampleError, decode_sample
    from open_vlm.data.shards import iter_tar_samples, open_url

    probe = ShardProbe(url, modality)

    def on_error(kind: str, where: str, err: Exception) -> None:
        probe.read_error = f"{kind}: {err}"

    with open_url(url) as stream:
        for sample in iter_tar_samples(stream, url, on_error):
            probe.samples.append(sample)
            try:
                decode_sample(sample, modality, PROBE_IMAGE_SIZE)
                probe.decoded += 1
            except SampleError as err:
                probe.reasons[str(err)] += 1
            if len(probe.samples) >= limit:
                break
    return probe


def misfit_fix(probe: ShardProbe, modality_key: str, urls_key: str) -> str:
    """How to fix a source whose samples do not decode as its modality."""
    other = probe.fitting_modalities()
    if other:
        return f"they decode as modality {other[0]}: set {modality_key} {other[0]}"
    return f"give the samples the members modality {probe.modality} needs, or point {urls_key} at other shards"


def check_first_shards(sources: list[tuple[str, SourceConfig]]) -> None:
    """`DataError` for the first source whose first shard has no sample its modality's decoder takes."""
    from open_vlm.data.shards import expand_urls

    for key, source in sources:
        probe = probe_shard(expand_urls(source.urls)[0], source.modality)
        if probe.read_error:
            log.warning("%s (%s): reading %s: %s", key, source.name, probe.url, probe.read_error)
        problem = probe.problem()
        if problem:
            origin = f"dataset {source.dataset} from {source.catalog_file}" if source.dataset else source.name
            fix = misfit_fix(probe, f"{key}.modality", f"{key}.urls")
            raise DataError(f"{key}{f' ({origin})' if origin else ''}: {problem}; {fix}")
