"""Image decoding: draft-mode JPEG decode then one antialiased bicubic resize, the same in training and inference."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from open_vlm.data.decode import decode_image, resize_image
from open_vlm.inference.processor import image_tensor


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, quality=90) if fmt == "JPEG" else image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(320, 240), (640, 480), (100, 80)])  # down, more down, up
def test_resize_is_pils_bicubic_to_rounding(shape):
    image = photo(*shape)
    ours = resize_image(torch.from_numpy(np.array(image)), 224).numpy().astype(int)
    pil = np.asarray(image.resize((224, 224), Image.BICUBIC, reducing_gap=None)).astype(int)
    assert ours.shape == (224, 224, 3) and np.abs(ours - pil).max() <= 2 and np.abs(ours - pil).mean() < 0.05


def test_jpeg_decodes_in_draft_mode_then_resizes_once():
    data = encoded(photo(640, 480), "JPEG")
    draft = Image.open(io.BytesIO(data))
    draft.draft("RGB", (224, 224))  # 640 x 480 -> 320 x 240: the nearest DCT scale not below 224
    assert draft.size == (320, 240)
    want = resize_image(torch.from_numpy(np.array(draft.convert("RGB"))), 224)
    got = decode_image(data, 224)
    assert got.dtype == torch.uint8 and got.is_contiguous() and torch.equal(got, want)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BICUBIC)).astype(int)
    assert np.abs(got.numpy().astype(int) - full).mean() < 2  # what a full decode gives, to a little detail


def test_inference_on_a_pil_image_preprocesses_as_training_does():
    image = photo(300, 200, seed=1)
    assert torch.equal(image_tensor(image, 64), decode_image(encoded(image, "PNG"), 64))
    gray = image.convert("L")
    assert torch.equal(image_tensor(gray, 64), decode_image(encoded(gray, "PNG"), 64))
