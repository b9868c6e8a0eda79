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


def with_heads(tmp_path, **model):
    """The tiny LXMERT with the object-prediction and QA heads on (LxmertConfig's own defaults)."""
    import yaml

    spec = yaml.safe_load((CONFIGS / "lxmert_tiny.yaml").read_text())
    spec.update(task_obj_predict=True, task_qa=True, num_qa_labels=3, num_object_labels=7, num_attr_labels=5)
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(spec))
    torch.manual_seed(0)
    return build_model(ModelConfig(kind="lxmert", config=str(tmp_path / "heads.yaml"), **model))


def test_enabled_heads_without_a_signal_are_frozen_not_left_without_gradients(tmp_path):
    """Issue 20 (also): object-prediction and QA heads got no loss yet stayed trainable (DDP refuses that)."""
    bundle = with_heads(tmp_path)
    model = bundle.model.train()
    result = build_loss("lxmert")(bundle.forward(model, batch()), batch())
    result.loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values()), [
        n for n, p in trainable.items() if p.grad is None
    ]
    assert not any(n.startswith(("obj_predict_head.", "answer_head.")) for n in trainable)


def test_qa_head_trains_on_answer_labels_like_transformers(tmp_path):
    bundle = with_heads(tmp_path, unfreeze=["qa_head"])
    model = bundle.model.eval()
    b = {**batch(), "answer_label": torch.tensor([2, IGNORE, 0])}
    ours = build_loss("lxmert")(bundle.forward(model, b), b)
    keys = ("input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_pos")
    answers = b["answer_label"][[0, 2]]
    picked = {k: b[k][[0, 2]] for k in keys}
    theirs = model(**picked, ans=answers).loss  # transformers' QA term alone (no other labels given)
    torch.testing.assert_close(torch.tensor(ours.parts["qa"]), theirs.detach())
    ours.loss.backward()
    assert model.answer_head.logit_fc[-1].weight.grad is not None
    assert all(p.grad is None for p in model.obj_predict_head.parameters())  # still frozen: no labels for it
