"""Per-source image augmentation, seeded per sample: random resized crop, flip, colour jitter, noise, v2 policies.

A source's `augment` (settings, or a recipe of `data.augment` / a built-in one by name) becomes an
`ImageAugment`. Its random draws come from a generator seeded by the sample's `__order__` = (train seed, source
index, position), the loader's own coordinates of the sample: the same sample gets the same augmentation at any
world size, with any number of workers, and after a resume. Training wraps each source's processor
(`augmented`); evaluation never augments. `augment_offline.py` writes augmented copies as new shards.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import torch

from open_vlm.config.schema import AugmentConfig, DataConfig, SourceConfig
from open_vlm.errors import ConfigError
from open_vlm.names import did_you_mean

log = logging.getLogger(__name__)

RECIPES: dict[str, AugmentConfig] = {
    "light": AugmentConfig(crop_scale=[0.8, 1.0], color_jitter=0.2),
    "strong": AugmentConfig(crop_scale=[0.5, 1.0], color_jitter=0.4, hue=0.05, noise_std=0.02, policy="randaugment"),
}
POLICIES = ("randaugment", "trivialaugment", "autoaugment", "augmix")
IMAGE_MODALITIES = ("image_text", "pretokenized")  # the modalities whose decoded samples carry an image
_DEFAULT = AugmentConfig()


def is_active(settings: AugmentConfig) -> bool:
    """Whether the settings change any image."""
    return bool(
        settings.crop_scale
        or settings.flip
        or settings.color_jitter
        or settings.hue
        or settings.noise_std
        or settings.policy
    )


def resolve(settings: AugmentConfig, recipes: dict[str, AugmentConfig], where: str) -> AugmentConfig | None:
    """The effective settings (the recipe, then every setting given here that differs from the default), checked;
    None when nothing is augmented. `ConfigError` naming `where` for an unknown recipe or a bad value."""
    if settings.recipe:
        known = {**RECIPES, **recipes}
        if settings.recipe not in known:
            hint = did_you_mean(settings.recipe, known)
            raise ConfigError(f"{where}.recipe: unknown recipe '{settings.recipe}'{hint} (known: {sorted(known)})")
        base = known[settings.recipe]
        if base.recipe:
            raise ConfigError(f"data.augment.{settings.recipe}.recipe: a recipe cannot name another recipe")
        changed = {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(AugmentConfig)
            if f.name != "recipe" and getattr(settings, f.name) != getattr(_DEFAULT, f.name)
        }
        settings = dataclasses.replace(base, recipe=settings.recipe, **changed)
    check_settings(settings, where)
    return settings if is_active(settings) else None


def check_settings(s: AugmentConfig, where: str) -> None:
    """`ConfigError` for a value out of range (checked before any work starts)."""

    def bad(key: str, value, want: str) -> ConfigError:
        return ConfigError(f"{where}.{key}: {value!r} is out of range (it must be {want})")

    if s.crop_scale and not (len(s.crop_scale) == 2 and 0 < s.crop_scale[0] <= s.crop_scale[1] <= 1):
        raise bad("crop_scale", s.crop_scale, "[min, max] with 0 < min <= max <= 1, or [] for no crop")
    if not (len(s.crop_ratio) == 2 and 0 < s.crop_ratio[0] <= s.crop_ratio[1]):
        raise bad("crop_ratio", s.crop_ratio, "[min, max] with 0 < min <= max")
    if not 0 <= s.color_jitter < 1:
        raise bad("color_jitter", s.color_jitter, "in [0, 1)")
    if not 0 <= s.hue <= 0.5:
        raise bad("hue", s.hue, "in [0, 0.5]")
    if not 0 <= s.noise_std <= 1:
        raise bad("noise_std", s.noise_std, "in [0, 1]")
    if s.policy and s.policy not in POLICIES:
        raise ConfigError(f"{where}.policy: unknown policy '{s.policy}'{did_you_mean(s.policy, POLICIES)} {POLICIES}")
    if s.policy_ops < 1:
        raise bad("policy_ops", s.policy_ops, ">= 1")
    if not 0 <= s.policy_magnitude <= 30:
        raise bad("policy_magnitude", s.policy_magnitude, "in [0, 30]")


def source_settings(data: DataConfig, source: SourceConfig, where: str) -> AugmentConfig | None:
    """A source's effective augmentation; `ConfigError` when it asks to augment a source without images."""
    settings = resolve(source.augment, data.augment, f"{where}.augment")
    if settings is not None and source.modality not in IMAGE_MODALITIES:
        raise ConfigError(
            f"{where}.augment: modality {source.modality} has no images to augment "
            f"(augmentation applies to {', '.join(IMAGE_MODALITIES)})"
        )
    return settings


def check_augment(data: DataConfig) -> None:
    """Every source's augmentation resolvable and in range (config load)."""
    for name, recipe in data.augment.items():
        check_settings(recipe, f"data.augment.{name}")
    for i, source in enumerate(data.sources):
        source_settings(data, source, f"data.sources[{i}]")


def sample_seed(order: tuple[int, int, int], copy: int = 0) -> int:
    """A 63-bit seed from a sample's (seed, source, position) (and an offline copy number)."""
    seed, source, position = order
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, source, position, copy, 0xA06]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


class ImageAugment:
    """The transforms of one source's settings, applied to uint8 (H, W, 3) images under a per-sample seed."""

    def __init__(self, settings: AugmentConfig):
        self.settings = settings
        self._transforms: dict[tuple[int, int], Callable] = {}  # per image size, built on first use

    def _build(self, height: int, width: int) -> Callable:
        from torchvision.transforms import v2

        s = self.settings
        steps: list = []
        if s.crop_scale:
            scale, ratio = tuple(s.crop_scale), tuple(s.crop_ratio)
            steps.append(v2.RandomResizedCrop((height, width), scale=scale, ratio=ratio, antialias=True))
        if s.flip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        if s.color_jitter or s.hue:
            jitter = s.color_jitter or None
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=s.hue or None))
        if s.policy == "randaugment":
            steps.append(v2.RandAugment(num_ops=s.policy_ops, magnitude=s.policy_magnitude))
        elif s.policy == "trivialaugment":
            steps.append(v2.TrivialAugmentWide())
        elif s.policy == "autoaugment":
            steps.append(v2.AutoAugment())
        elif s.policy == "augmix":
            steps.append(v2.AugMix(severity=max(1, min(s.policy_magnitude, 10))))
        return v2.Compose(steps)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """`image` uint8 (H, W, 3) augmented with the random draws of `seed`; the global RNG is left as it was."""
        chw = image.permute(2, 0, 1)
        size = (chw.shape[1], chw.shape[2])
        if size not in self._transforms:
            self._transforms[size] = self._build(*size)
        # torchvision draws from the global generator: draw from our seed, then put the caller's state back (the
        # trainer's own random stream, e.g. dropout, must not depend on the data).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self._transforms[size](chw)
            if self.settings.noise_std:
                noise = torch.randn(out.shape) * (self.settings.noise_std * 255.0)
                out = (out.float() + noise).clamp_(0, 255).round_().to(torch.uint8)
        return out.permute(1, 2, 0).contiguous()


class AugmentedProcessor:
    """A source's processor with its images augmented first (seeded by the sample's `__order__`)."""

    def __init__(self, processor: Callable, augment: ImageAugment):
        self.processor, self.augment = processor, augment

    def __call__(self, decoded: dict, source) -> dict:
        if "image" in decoded:
            decoded = {**decoded, "image": self.augment(decoded["image"], sample_seed(decoded["__order__"]))}
        return self.processor(decoded, source)


def augmented(processor: Callable, data: DataConfig, source: SourceConfig, where: str) -> Callable:
    """`processor`, wrapped to augment `source`'s images when its settings ask for it."""
    settings = source_settings(data, source, where)
    if settings is None:
        return processor
    log.info("%s (%s): augmenting images with %s", where, source.name, describe(settings))
    return AugmentedProcessor(processor, ImageAugment(settings))


def describe(settings: AugmentConfig) -> str:
    """The settings that differ from the defaults, as `key=value` pairs."""
    values = dataclasses.asdict(settings)
    return ", ".join(f"{k}={v}" for k, v in values.items() if v != getattr(_DEFAULT, k)) or "nothing"


def fingerprint(data: DataConfig) -> list[dict | None]:
    """Each source's effective augmentation (resume refuses a change: it changes what the model sees)."""
    out = []
    for i, source in enumerate(data.sources):
        settings = source_settings(data, source, f"data.sources[{i}]")
        out.append(None if settings is None else {**dataclasses.asdict(settings), "recipe": ""})
    return out
