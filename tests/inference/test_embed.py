"""Contrastive inference: normalised embeddings, zero-shot probabilities, `open-vlm embed`."""

import dataclasses

import numpy as np
import pytest
import torch

from open_vlm import OpenVLM
from open_vlm.inference.processor import InferenceProcessor
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


def test_feature_layers_mean_pool_a_hidden_layer(siglip, trained, examples, tmp_path, capsys):
    """`--text-feature-layer` / `--vision-feature-layer`: that layer's hidden states averaged, L2-normalised."""
    from open_vlm.cli import main

    proc = siglip.processor
    text = proc.texts(["a red square"])
    with torch.no_grad():
        hidden = siglip.model.text_model(**text, output_hidden_states=True).hidden_states[1][0]
        patches = siglip.model.vision_model(proc.pixel_values(examples[:1]), output_hidden_states=True).hidden_states
    expected_text = torch.nn.functional.normalize(hidden[text["attention_mask"][0].bool()].mean(0), dim=-1)
    expected_image = torch.nn.functional.normalize(patches[2][0].mean(0), dim=-1)
    checkpoint = str(trained("siglip"))
    capsys.readouterr()
    assert main(["embed", "--checkpoint", checkpoint, "--text", "a red square", "--text-feature-layer", "1"]) == 0
    row = np.array([float(x) for x in capsys.readouterr().out.split(": ", 1)[1].split()])
    np.testing.assert_allclose(row, expected_text.numpy(), atol=1e-5)
    pooled = siglip.encode_text(["a red square"])[0].numpy()
    assert pooled.shape != row.shape or not np.allclose(row, pooled, atol=1e-3)
    out = tmp_path / "layer2.npy"
    args = [
        "embed",
        "--checkpoint",
        checkpoint,
        "--image",
        examples[0],
        "--vision-feature-layer",
        "2",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    np.testing.assert_allclose(np.load(out)[0], expected_image.numpy(), atol=1e-5)
    assert main(["embed", "--checkpoint", checkpoint, "--text", "a", "--text-feature-layer", "9"]) == 2
    assert "text_feature_layer 9: the tower has hidden states 0..2" in capsys.readouterr().err


def test_the_models_configured_layer_is_the_default(siglip, examples):
    settings = dataclasses.replace(siglip.processor.settings, text_feature_layer=1, vision_feature_layer=0)
    configured = OpenVLM(siglip.model, InferenceProcessor(siglip.processor.tokenizer, settings))
    torch.testing.assert_close(configured.encode_text(CLASSES), siglip.encode_text(CLASSES, layer=1))
    assert configured.encode_text(CLASSES).shape != siglip.encode_text(CLASSES).shape or not torch.allclose(
        configured.encode_text(CLASSES), siglip.encode_text(CLASSES), atol=1e-3
    )
    torch.testing.assert_close(configured.encode_image(examples), siglip.encode_image(examples, layer=0))
    # zero-shot scores stay those of the pooled embeddings the pair logits were trained on
    torch.testing.assert_close(configured.zero_shot(examples, CLASSES), siglip.zero_shot(examples, CLASSES))
