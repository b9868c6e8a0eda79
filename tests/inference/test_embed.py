"""Contrastive inference: normalised embeddings, zero-shot probabilities, `open-vlm embed`."""

import numpy as np
import pytest
import torch

from open_vlm import OpenVLM
from tests.conftest import run_cli

CLASSES = ["red square", "blue circle", "green triangle"]


@pytest.fixture(scope="module")
def siglip(trained):
    return OpenVLM.from_pretrained(trained("siglip"))


def test_embeddings_are_the_models_normalised_embeddings(siglip, examples):
    images, texts = siglip.encode_image(examples), siglip.encode_text(CLASSES)
    assert images.shape[0] == len(examples) and texts.shape[0] == len(CLASSES)
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(len(examples)))
    proc = siglip.processor
    with torch.no_grad():
        out = siglip.model(**proc.texts(CLASSES), pixel_values=proc.pixel_values(examples))
    torch.testing.assert_close(images, out.image_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(texts, out.text_embeds, atol=1e-6, rtol=0)


def test_zero_shot_is_a_softmax_over_the_models_pair_logits(siglip, examples):
    probs = siglip.zero_shot(examples, CLASSES, template="a {}")
    proc = siglip.processor
    with torch.no_grad():
        out = siglip.model(**proc.texts([f"a {c}" for c in CLASSES]), pixel_values=proc.pixel_values(examples))
    torch.testing.assert_close(probs, out.logits_per_image.softmax(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(examples)))


def test_generative_kinds_do_not_embed(trained, examples):
    with pytest.raises(ValueError, match="not a contrastive model"):
        OpenVLM.from_pretrained(trained("paligemma")).encode_image(examples)


def test_embed_cli_writes_npy(siglip, trained, examples, tmp_path):
    out = tmp_path / "e.npy"
    result = run_cli(
        "-m", "open_vlm.cli", "embed", "--checkpoint", str(trained("siglip")), "--image", *examples, "--out", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), siglip.encode_image(examples).numpy(), atol=1e-6)
    result = run_cli("-m", "open_vlm.cli", "embed", "--checkpoint", str(trained("siglip")), "--text", "a red square")
    assert result.returncode == 0 and result.stdout.startswith("a red square: ")
    row = np.array([float(x) for x in result.stdout.split(": ", 1)[1].split()])
    np.testing.assert_allclose(row, siglip.encode_text(["a red square"])[0].numpy(), atol=1e-5)
