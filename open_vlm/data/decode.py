"""Raw samples (bytes per suffix) to decoded samples, per modality. Images come out as uint8 CHW tensors."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
TEXT_FIELDS = ("caption", "text", "txt")
IMAGE_MARKER = "<image>"  # in a chat turn: where the image goes
# Chat roles as written in shards (OpenAI `role`, LLaVA `from`) → ours.
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
# Decoded fields that some task can train on (a sample with none of them is bad whatever its task).
TRAINABLE_FIELDS = ("text", "answers", "messages", "suffix")


class SampleError(ValueError):
    """A sample that cannot be decoded: `kind` says why (counted per kind by the loader)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _field(sample: dict, *suffixes: str) -> bytes | None:
    for suffix in suffixes:
        if suffix in sample:
            return sample[suffix]
        if suffix + ".gz" in sample:
            return gzip.decompress(sample[suffix + ".gz"])
    return None


def resize_image(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) → uint8 (size, size, 3), bicubic with antialiasing (PIL's filter, to ±2 of its rounding)."""
    if tuple(pixels.shape[:2]) == (size, size):
        return pixels
    # torch's uint8 antialiased kernel: ~5x faster than PIL's resize on one core, the same result to rounding.
    chw = pixels.permute(2, 0, 1).unsqueeze(0)  # a channels-last view: the kernel's fast input layout
    out = torch.nn.functional.interpolate(chw, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return torch.stack(out[0].unbind(0), dim=-1)  # (3, size, size) planes → (size, size, 3), 2x a permuted copy


def decode_image(data: bytes, size: int) -> torch.Tensor:
    """JPEG/PNG/WebP bytes → uint8 tensor (size, size, 3); JPEGs decode in draft mode at the nearest size >= size."""
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (size, size))  # JPEG only: DCT-domain downscale by 2/4/8, never below size
        if image.mode != "RGB":
            image = image.convert("RGB")
        array = np.array(image)  # decodes; writable, owned by the tensor
    except UnidentifiedImageError:  # its message names only an in-memory buffer
        raise SampleError("bad_image", "undecodable image: not a format PIL reads") from None
    except Exception as err:  # PIL raises many types for bad data
        raise SampleError("bad_image", f"undecodable image: {err}") from err
    return resize_image(torch.from_numpy(array), size)  # (H, W, 3); normalize_images makes it (3, H, W) float


def normalize_images(pixels: torch.Tensor, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 (..., H, W, 3) images → float (..., 3, H, W), SigLIP convention ((x/255 - mean) / std)."""
    return ((pixels.float() / 255.0 - mean) / std).movedim(-1, -3).contiguous()


def _json(sample: dict) -> dict | None:
    """The sample's `json` member as a dict (None when absent); `SampleError` when it is not a JSON object."""
    meta = _field(sample, "json")
    if meta is None:
        return None
    try:
        data = json.loads(meta)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SampleError("bad_json", f"invalid json: {err}") from err
    if not isinstance(data, dict):
        raise SampleError("bad_json", f"json is a {type(data).__name__}, not an object")
    return data


def decode_text(sample: dict) -> str:
    """The caption: the `txt` (`text`, `caption`) member, else json `caption` / `text`."""
    raw = _field(sample, "txt", "text", "caption")
    if raw is not None:
        return raw.decode("utf-8").strip()
    data = _json(sample) or {}
    for name in TEXT_FIELDS:
        if isinstance(data.get(name), str):
            return data[name].strip()
    raise SampleError("missing_field", "no txt/json caption or text field")


def _content(value: object) -> str:
    """A turn's content: a string, or OpenAI-style parts (`{"type": "text", "text"}`, `{"type": "image"}`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind in ("image", "image_url"):
                parts.append(IMAGE_MARKER)
            else:
                raise SampleError("bad_json", f"a turn's content part {part!r} is neither text nor image")
        return "".join(parts)
    raise SampleError("bad_json", f"a turn's content is a {type(value).__name__}, not a string")


def decode_messages(turns: object, role_key: str, content_key: str) -> list[dict]:
    """Chat turns (`messages` role/content or LLaVA `conversations` from/value) → `[{"role", "content"}]`."""
    if not isinstance(turns, list) or not turns:
        raise SampleError("bad_json", "messages / conversations must be a non-empty list of turns")
    out = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get(role_key) not in ROLES:
            got = turn.get(role_key) if isinstance(turn, dict) else turn
            raise SampleError("bad_json", f"a turn's {role_key} is {got!r} (known: {', '.join(ROLES)})")
        out.append({"role": ROLES[turn[role_key]], "content": _content(turn.get(content_key, ""))})
    return out


def _answers(value: object) -> list[str]:
    values = value if isinstance(value, list) else [value]
    # VQAv2 lists dicts {"answer": ...} per annotator; plain strings elsewhere
    texts = [v.get("answer") if isinstance(v, dict) else v for v in values]
    texts = [str(t).strip() for t in texts if isinstance(t, str | int | float) and str(t).strip()]
    if not texts:
        raise SampleError("bad_json", f"answer {value!r} holds no non-empty answer")
    return texts


def decode_fields(sample: dict) -> dict:
    """The per-sample text fields of the shard conventions (README: *Shard conventions*), normalised:

    `text` (caption: `txt` or json `caption`/`text`), `prompt`, `question`, `answers` (json `answer` or `answers`,
    a string or a list), `messages` (json `messages` role/content or `conversations` from/value), `prefix`,
    `suffix`, `answer_label` (an int). Which of them a sample needs depends on its task (`tokenize/fields.py`)."""
    out: dict = {}
    raw = _field(sample, "txt", "text", "caption")
    if raw is not None:
        out["text"] = raw.decode("utf-8").strip()  # not UTF-8: a counted bad sample (bad_text), not mojibake
    data = _json(sample) or {}
    if "text" not in out:
        for name in TEXT_FIELDS:
            if isinstance(data.get(name), str):
                out["text"] = data[name].strip()
                break
    for name in ("prompt", "question", "prefix", "suffix"):
        if isinstance(data.get(name), str):
            out[name] = data[name].strip()
    for name in ("answer", "answers"):
        if data.get(name) is not None:
            out["answers"] = _answers(data[name])
            break
    if data.get("messages") is not None:
        out["messages"] = decode_messages(data["messages"], "role", "content")
    elif data.get("conversations") is not None:
        out["messages"] = decode_messages(data["conversations"], "from", "value")
    if isinstance(data.get("answer_label"), int):
        out["answer_label"] = data["answer_label"]
    if not any(out.get(name) for name in TRAINABLE_FIELDS):
        raise SampleError(
            "missing_field", "no txt / json caption|text, answer, messages / conversations or suffix field"
        )
    return out


def decode_image_text(sample: dict, image_size: int) -> dict:
    data = _field(sample, *IMAGE_SUFFIXES)
    if data is None:
        raise SampleError("missing_field", "no jpg/png/webp image")
    image = decode_image(data, image_size)
    return {"image": image, **decode_fields(sample)}


def decode_text_only(sample: dict, image_size: int) -> dict:
    return decode_fields(sample)


def _npy(data: bytes, name: str) -> torch.Tensor:
    try:
        return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
    except ValueError as err:
        raise SampleError("bad_array", f"invalid {name}.npy: {err}") from err


def decode_region_features(sample: dict, image_size: int) -> dict:
    """LXMERT-style: `features.npy` (K, D), `boxes.npy` (K, 4) normalised to [0, 1], and a caption."""
    feats, boxes = _field(sample, "features.npy"), _field(sample, "boxes.npy")
    if feats is None or boxes is None:
        raise SampleError("missing_field", "no features.npy / boxes.npy")
    out = {
        "features": _npy(feats, "features").float(),
        "boxes": _npy(boxes, "boxes").float(),
        **decode_fields(sample),
    }
    if out["features"].ndim != 2 or out["boxes"].shape != (out["features"].shape[0], 4):
        raise SampleError("bad_array", f"features {tuple(out['features'].shape)} / boxes {tuple(out['boxes'].shape)}")
    return out


def decode_pretokenized(sample: dict, image_size: int) -> dict:
    """Shards written by `tools/tokenize_shards.py`: every `<name>.npy` member, plus the image when present."""
    out: dict = {"arrays": {s[: -len(".npy")]: _npy(v, s) for s, v in sample.items() if s.endswith(".npy")}}
    if not out["arrays"]:
        raise SampleError("missing_field", "no .npy members in a pre-tokenized sample")
    data = _field(sample, *IMAGE_SUFFIXES)
    if data is not None:
        out["image"] = decode_image(data, image_size)
    return out


DECODERS: dict[str, Callable[[dict, int], dict]] = {
    "image_text": decode_image_text,
    "text": decode_text_only,
    "region_features": decode_region_features,
    "pretokenized": decode_pretokenized,
}


def decode_sample(sample: dict, modality: str, image_size: int) -> dict:
    """Decode one raw sample of `modality`; raises `SampleError` for bad data."""
    try:
        decoder = DECODERS[modality]
    except KeyError:
        raise ValueError(f"unknown modality {modality!r}; known: {sorted(DECODERS)}") from None
    try:
        out = decoder(sample, image_size)
    except SampleError:
        raise
    except UnicodeDecodeError as err:
        raise SampleError("bad_text", f"text that is not UTF-8: {err}") from err
    except (OSError, EOFError, zlib.error) as err:  # a broken .gz member, a file cut short
        raise SampleError("bad_member", f"unreadable member ({type(err).__name__}: {err})") from err
    except Exception as err:  # bytes no decoder expected: bad data, never a crash of the run
        raise SampleError("other", f"undecodable sample ({type(err).__name__}: {err})") from err
    out["__key__"] = sample["__key__"]
    return out
