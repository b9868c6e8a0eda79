"""`siglip` kind: build, persist (local and s3://), match transformers, pick vision feature layers."""

import pytest
import torch
from transformers import SiglipModel

from open_vlm.config.schema import ModelConfig
from open_vlm.models.losses import build_loss
from open_vlm.models.registry import build_model
from open_vlm.models.siglip import vision_features
from tests.models.conftest import CONFIGS, assert_has_grads, images, token_ids


def tiny(tokenizer=None):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="siglip", config=str(CONFIGS / "siglip_tiny.yaml")), tokenizer)


def batch(vocab=64):
    return {"pixel_values": images(3), "input_ids": token_ids(3, 16, vocab)}


def embeds(model, b):
    model.eval()
    with torch.no_grad():
        out = model(**b)
    return out.image_embeds, out.text_embeds, out.logits_per_image


def test_bundle_declares_contrastive_task(tokenizer):
    bundle = tiny(tokenizer)
    assert bundle.task == "contrastive"
    assert bundle.image_size == 32
    assert bundle.model.config.text_config.vocab_size == len(tokenizer)
    assert bundle.shard_units[0] is bundle.model.vision_model
    assert len(bundle.shard_units) == 1 + 2


def test_save_load_local_and_s3_identical(tmp_path, upload):
    bundle = tiny()
    b = batch()
    want = embeds(bundle.model, b)
    bundle.model.save_pretrained(tmp_path / "m")
    url = upload(tmp_path / "m", "siglip")
    for source in (str(tmp_path / "m"), url):
        loaded = build_model(ModelConfig(kind="siglip", pretrained=source))
        for a, w in zip(embeds(loaded.model, b), want, strict=True):
            assert torch.equal(a, w)
    # the stock class reads the folder too
    stock = SiglipModel.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    for a, w in zip(embeds(stock, b), want, strict=True):
        assert torch.equal(a, w)


def test_forward_backward_and_loss_matches_transformers():
    bundle = tiny()
    b = batch()
    loss = build_loss("siglip")(bundle.forward(bundle.model, b), b).loss
    reference = bundle.model(**b, return_loss=True).loss  # transformers' own sigmoid loss
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert_has_grads(bundle.model)
    assert bundle.model.logit_bias.grad is not None


def test_vision_feature_layer_selects_intermediate_output():
    tower = tiny().model.vision_model.eval()
    x = images(2)
    with torch.no_grad():
        hidden = tower.embeddings(x)
        first = tower.encoder.layers[0](hidden, attention_mask=None)
        first = first[0] if isinstance(first, tuple) else first
        torch.testing.assert_close(vision_features(tower, x, 0), hidden)
        torch.testing.assert_close(vision_features(tower, x, 1), first)
        torch.testing.assert_close(vision_features(tower, x, -2), first)  # 2 layers: penultimate is layer 1
        final = vision_features(tower, x, -1)
        torch.testing.assert_close(final, tower(x).last_hidden_state)
        assert not torch.allclose(final, vision_features(tower, x, 2))  # -1 includes post_layernorm


def test_fresh_siglip_starts_at_the_papers_scale_and_bias(tmp_path):
    """Issue 20.6: t = 10, b = -10 (SigLIP paper, big_vision; the bias is open_clip's SigLIP configs' too)."""
    import math

    import open_clip

    model = tiny().model
    assert float(model.logit_scale.detach().exp()) == pytest.approx(10.0)
    assert float(model.logit_bias.detach()) == open_clip.get_model_config("ViT-B-16-SigLIP")["init_logit_bias"] == -10
    with torch.no_grad():
        model.logit_scale.fill_(math.log(3.0))
    model.save_pretrained(tmp_path / "m")  # a pretrained model keeps its own values
    loaded = build_model(ModelConfig(kind="siglip", pretrained=str(tmp_path / "m"))).model
    assert float(loaded.logit_scale.detach().exp()) == pytest.approx(3.0)


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_logit_scale_is_clamped_to_ln_100_as_open_clip_does(kind):
    """Issue 20.6: open_clip clamps the log scale to [0, ln 100] after every step; we clamp before each forward."""
    import math

    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind=kind, config=str(CONFIGS / f"{kind}_tiny.yaml")))
    with torch.no_grad():
        bundle.model.logit_scale.fill_(6.0)
    out = bundle.forward(bundle.model, batch())
    assert float(out["logit_scale"]) == pytest.approx(100.0)
    assert float(bundle.model.logit_scale) == pytest.approx(math.log(100.0))
    with torch.no_grad():
        bundle.model.logit_scale.fill_(-1.0)
    assert float(bundle.forward(bundle.model, batch())["logit_scale"]) == pytest.approx(1.0)
