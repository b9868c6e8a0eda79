"""`lxmert` kind: build, persist (local and s3://), forward/backward, the lxmert loss equals transformers'."""

import torch
from transformers import LxmertForPreTraining

from open_vlm.config.schema import ModelConfig
from open_vlm.models.losses import IGNORE, build_loss
from open_vlm.models.registry import build_model
from tests.models.conftest import CONFIGS, assert_has_grads, token_ids


def tiny(tokenizer=None):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="lxmert", config=str(CONFIGS / "lxmert_tiny.yaml")), tokenizer)


def batch(n=3, length=8, regions=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = token_ids(n, length, 64, seed=seed)
    masked = torch.full_like(ids, IGNORE)
    masked[:, 2] = ids[:, 2]
    masked[0, 5] = ids[0, 5]
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "visual_feats": torch.randn(n, regions, 16, generator=g),
        "visual_pos": torch.rand(n, regions, 4, generator=g),
        "labels": masked,
        "matched_label": torch.tensor([1, 0, 1][:n]),
    }


def outputs(bundle_or_model, b, forward=None):
    model = bundle_or_model.eval()
    with torch.no_grad():
        return forward(model, b)


def test_bundle_fields(tokenizer):
    bundle = tiny(tokenizer)
    assert bundle.task == "lxmert"
    assert bundle.model.config.vocab_size == len(tokenizer)
    assert len(bundle.shard_units) == 2 + 1 + 1
    assert set(bundle.groups) >= {"language", "vision", "cross", "embeddings"}


def test_save_load_local_and_s3_identical(tmp_path, upload):
    bundle = tiny()
    b = batch()
    want = outputs(bundle.model, b, bundle.forward)
    bundle.model.save_pretrained(tmp_path / "m")
    url = upload(tmp_path / "m", "lxmert")
    for source in (str(tmp_path / "m"), url):
        got = outputs(build_model(ModelConfig(kind="lxmert", pretrained=source)).model, b, bundle.forward)
        for key in want:
            assert torch.equal(got[key], want[key])


def test_loss_equals_transformers_and_trains():
    bundle = tiny()
    model = bundle.model.train()
    b = batch()
    torch.manual_seed(1)
    ours = build_loss("lxmert")(bundle.forward(model, b), b)
    torch.manual_seed(1)  # same dropout masks
    keys = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos", "labels")
    theirs = model(**{k: b[k] for k in keys}, matched_label=b["matched_label"]).loss
    torch.testing.assert_close(ours.loss, theirs)
    assert ours.parts["masked_tokens"] == 4
    weighted = build_loss("lxmert", mlm_weight=2.0, itm_weight=0.5)(bundle.forward(model.eval(), b), b)
    torch.testing.assert_close(weighted.loss, torch.tensor(2.0 * weighted.parts["mlm"] + 0.5 * weighted.parts["itm"]))
    ours.loss.backward()
    assert_has_grads(model)
    assert isinstance(model, LxmertForPreTraining)
