"""`paligemma` kind: build with a tokenizer, persist (local and s3://), groups, forward/backward."""

import torch
from transformers import PaliGemmaForConditionalGeneration

from open_vlm.config.schema import ModelConfig
from open_vlm.models.losses import build_loss
from open_vlm.models.registry import build_model
from tests.models.conftest import CONFIGS, assert_has_grads, images, token_ids


def tiny(tokenizer):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="paligemma", config=str(CONFIGS / "paligemma_tiny.yaml")), tokenizer)


def batch(bundle, tokenizer, n=2, text=5):
    image = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.cat([torch.full((n, bundle.num_image_tokens), image), token_ids(n, text, len(tokenizer))], 1)
    types = torch.zeros_like(ids)
    types[:, -2:] = 1
    labels = torch.where(types == 1, ids, -100)
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": images(n),
        "labels": labels,
    }


def logits(model, b):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits


def test_save_load_local_and_s3_identical(tmp_path, tokenizer, upload):
    bundle = tiny(tokenizer)
    assert bundle.task == "prefix_lm" and bundle.num_image_tokens == 16
    b = batch(bundle, tokenizer)
    want = logits(bundle.model, b)
    bundle.model.save_pretrained(tmp_path / "m")
    url = upload(tmp_path / "m", "pg")
    for source in (str(tmp_path / "m"), url):
        assert torch.equal(logits(build_model(ModelConfig(kind="paligemma", pretrained=source)).model, b), want)
    stock = PaliGemmaForConditionalGeneration.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert torch.equal(logits(stock, b), want)


def test_forward_backward_with_frozen_vision(tokenizer):
    torch.manual_seed(0)
    cfg = ModelConfig(kind="paligemma", config=str(CONFIGS / "paligemma_tiny.yaml"), freeze=["vision"])
    bundle = build_model(cfg, tokenizer)
    model = bundle.model.train()
    b = batch(bundle, tokenizer)
    result = build_loss("next_token")(bundle.forward(model, b), b)
    assert result.count == 2 * 2  # two samples, each with its last two tokens supervised
    result.loss.backward()
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    assert_has_grads(model.model.multi_modal_projector)
    assert_has_grads(model.model.language_model)
