"""`vlm` kind: SigLIP tower + projector + causal LM; persistence, equivalence with the bare LM, scatter."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from open_vlm.config.schema import ModelConfig
from open_vlm.models.projector import pixel_shuffle
from open_vlm.models.registry import build_model
from open_vlm.models.vlm import VisionLanguageModel
from tests.models.conftest import CONFIGS, assert_has_grads, images, token_ids

IMAGE = 3  # image_token_id of vlm_tiny.yaml


def tiny(tokenizer=None, **model):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="vlm", config=str(CONFIGS / "vlm_tiny.yaml"), **model), tokenizer)


def with_images(n=2, text=6, num_image_tokens=4):
    ids = token_ids(n, num_image_tokens + text, 64)
    ids[:, 1 : 1 + num_image_tokens] = IMAGE
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": images(n)}


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_bundle_fields(tokenizer):
    bundle = tiny(tokenizer)
    model = bundle.model
    assert bundle.task == "chat_lm"
    assert bundle.num_image_tokens == 4  # (32 / 8)^2 patches / 2^2 pixel shuffle
    assert model.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert model.language_model.config.vocab_size == len(tokenizer)
    assert bundle.shard_units[0] is model.vision_tower
    assert bundle.shard_units[1:] == list(model.language_model.model.layers)
    assert bundle.groups["embeddings"] == ["language_model.model.embed_tokens."]
    assert bundle.groups["lm_head"] == ["language_model.lm_head."]


def test_save_load_local_and_s3_identical(tmp_path, upload):
    bundle = tiny()
    batch = with_images()
    want = logits(bundle.model, batch)
    bundle.model.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {
        "vlm_config.json",
        "vision_tower.safetensors",
        "projector.safetensors",
        "language_model",
    }
    url = upload(tmp_path / "m", "vlm")
    for source in (str(tmp_path / "m"), url):
        assert torch.equal(logits(build_model(ModelConfig(kind="vlm", pretrained=source)).model, batch), want)


def test_language_half_equals_bare_causal_lm(tmp_path):
    bundle = tiny()
    bundle.model.save_pretrained(tmp_path / "m")
    bare = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m" / "language_model"), local_files_only=True)
    text = {"input_ids": token_ids(2, 10, 64)}
    assert torch.equal(logits(bundle.model, text), logits(bare, text))


def test_image_features_land_on_placeholders_in_order():
    model = tiny().model.eval()
    batch = with_images()
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["pixel_values"])
        feats = model.image_features(batch["pixel_values"])
        plain = model.language_model.get_input_embeddings()(batch["input_ids"])
    assert torch.equal(embeds[:, 1:5], feats)
    assert torch.equal(embeds[:, :1], plain[:, :1]) and torch.equal(embeds[:, 5:], plain[:, 5:])
    # the image changes what follows it, and only that (causal LM)
    other = dict(batch, pixel_values=images(2, seed=1))
    a, b = logits(model, batch), logits(model, other)
    assert torch.equal(a[:, 0], b[:, 0]) and not torch.allclose(a[:, -1], b[:, -1])


def test_placeholder_count_must_match():
    model = tiny().model
    batch = with_images(num_image_tokens=3)
    with pytest.raises(ValueError, match="image tokens"):
        model(**batch)


def test_forward_backward_through_all_parts():
    model = tiny().model.train()
    batch = with_images()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    assert_has_grads(model.vision_tower)
    assert_has_grads(model.projector)
    assert_has_grads(model.language_model)


def test_pixel_shuffle_groups_square_blocks():
    grid = torch.arange(16.0).view(1, 16, 1)  # a 4x4 grid, value = row * 4 + col
    out = pixel_shuffle(grid, 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5]  # top-left 2x2 block
    assert out[0, 3].tolist() == [10, 11, 14, 15]  # bottom-right


def test_vision_feature_layer():
    model = tiny(vision_feature_layer=-2).model.eval()
    x = images(1)
    with torch.no_grad():
        hidden = model.vision_tower(x, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.image_features(x), model.projector(hidden))
        assert not torch.allclose(model.image_features(x), model.projector(model.vision_tower(x).last_hidden_state))


def test_linear_projector_maps_shuffled_patches():
    from open_vlm.models.projector import Projector

    proj = Projector("linear", 32, 48, factor=2)
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(proj(x), pixel_shuffle(x, 2) @ proj.proj.weight.T + proj.proj.bias)
    with pytest.raises(ValueError, match="unknown projector"):
        Projector("conv", 32, 48)


def test_composes_pretrained_parts(tmp_path, upload):
    from transformers import SiglipModel

    from open_vlm.models.siglip import siglip_config
    from open_vlm.models.spec import read_model_config

    torch.manual_seed(1)
    siglip = SiglipModel(siglip_config(read_model_config(str(CONFIGS / "siglip_tiny.yaml"))))
    siglip.save_pretrained(tmp_path / "siglip")
    tiny().model.language_model.save_pretrained(tmp_path / "lm")
    spec = read_model_config(str(CONFIGS / "vlm_tiny.yaml"))
    spec.update(vision_pretrained=upload(tmp_path / "siglip", "siglip"), text_pretrained=str(tmp_path / "lm"))
    (tmp_path / "vlm.yaml").write_text(__import__("yaml").safe_dump(spec))
    model = build_model(ModelConfig(kind="vlm", config=str(tmp_path / "vlm.yaml"))).model
    for name, value in model.vision_tower.state_dict().items():
        assert torch.equal(value, siglip.vision_model.state_dict()[name]), name
    assert not hasattr(model.vision_tower, "head")
    assert isinstance(model, VisionLanguageModel)


def test_forward_on_an_accelerator_never_reads_device_values_on_the_host():
    """A training forward on a (fake) CUDA device: any `int()`/`.item()` of a device tensor would be a host sync."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call

    model = tiny().model.train()
    batch = {**with_images(), "labels": with_images()["input_ids"]}
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with FakeTensorMode() as mode:  # fake tensors refuse data-dependent reads (no GPU needed)
        params = {k: mode.from_tensor(v).to("cuda") for k, v in state.items()}
        out = functional_call(model, params, (), {k: mode.from_tensor(v).to("cuda") for k, v in batch.items()})
        assert out.logits.device.type == "cuda" and out.loss.shape == ()


def test_image_token_mismatch_is_one_clear_error_on_cpu():
    model = tiny().model
    batch = with_images()
    batch["input_ids"][0, 1] = 7  # one placeholder fewer than the features
    with pytest.raises(ValueError, match="7 image tokens in input_ids for 2x4 features"):
        logits(model, batch)
