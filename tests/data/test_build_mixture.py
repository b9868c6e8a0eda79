"""Issue 16: per-source tasks in one loader (captions and VQA under prefix_lm, text under packed causal_lm), the
mixing rules checked at config load, and packed documents reaching PaliGemma on the mixture path."""

from types import SimpleNamespace

import pytest
import torch
import yaml

from open_vlm.config.load import load_run_config
from open_vlm.config.schema import DataConfig, ModelConfig, SourceConfig
from open_vlm.data.build import build_model_loader
from open_vlm.errors import ConfigError
from open_vlm.models.losses import next_token_loss_sum
from open_vlm.models.registry import build_model, lm_forward
from open_vlm.tokenize.tokenizers import load_tokenizer
from tests.conftest import REPO

BUNDLE = SimpleNamespace(task="prefix_lm", num_image_tokens=4, image_size=16)


def sources(mixture_dir, text_task="causal_lm"):
    return [
        SourceConfig(name="captions", urls=[str(mixture_dir / "demo-{000000..000001}.tar")], weight=0.5),
        SourceConfig(name="vqa", urls=[str(mixture_dir / "vqa/vqa-{000000..000001}.tar")], weight=0.3),
        SourceConfig(
            name="text",
            urls=[str(mixture_dir / "text/text-{000000..000001}.tar")],
            weight=0.2,
            modality="text",
            task=text_task,
        ),
    ]


def loader(mixture_dir, **data):
    cfg = DataConfig(sources=data.pop("sources", None) or sources(mixture_dir), batch_size=4, num_streams=4, **data)
    tok = load_tokenizer(str(mixture_dir / "tokenizer"))
    return build_model_loader(cfg, seed=0, global_batch=4, bundle=BUNDLE, tokenizer=tok), tok


def first_batches(mixture_dir, steps=20, **data):
    """The first batch of each source (mixing batch: one source per step)."""
    batches, tok = {}, None
    ldr, tok = loader(mixture_dir, **data)
    it = iter(ldr)
    for _ in range(steps):
        batch = next(it)
        sources_seen = {m["source"] for m in batch["__meta__"]}
        assert len(sources_seen) == 1  # homogeneous
        batches.setdefault(sources_seen.pop(), batch)
    return batches, tok


def test_each_source_gets_its_task(mixture_dir):
    batches, tok = first_batches(mixture_dir, pack=True)
    assert set(batches) == {0, 1, 2}
    image = tok.convert_tokens_to_ids("<image>")
    caption, vqa, text = batches[0], batches[1], batches[2]
    for batch in (caption, vqa):  # prefix_lm: image tokens first, token types, pixels
        assert (batch["input_ids"][:, :4] == image).all() and batch["pixel_values"].shape[0] == 4
        assert "token_type_ids" in batch and "document_ids" not in batch
    assert tok.decode(caption["input_ids"][0, 4:], skip_special_tokens=True).startswith("caption en\n")
    question = tok.decode(vqa["input_ids"][0, 4:], skip_special_tokens=True).split("\n")[0]
    assert question in ("what colour is the shape?", "which shape is it?", "where is the shape?")
    # causal_lm, packed (data.pack): no image, documents packed with restarting positions
    assert "pixel_values" not in text and "token_type_ids" not in text and (text["input_ids"] != image).all()
    assert text["input_ids"].shape[0] < 4 and text["num_documents"] == 4
    assert (text["position_ids"][text["document_ids"] >= 0] == 0).sum() == 4


def test_packed_text_reaches_paligemma_on_the_mixture_path(mixture_dir):
    """Packed rows through `lm_forward` in training mode (the text-only hook, the vision tie): each document
    is scored as if alone."""
    batches, tok = first_batches(mixture_dir, pack=True)
    text = batches[2]
    torch.manual_seed(0)
    cfg = ModelConfig(kind="paligemma", config=str(REPO / "configs/models/paligemma_tiny.yaml"))
    model = build_model(cfg, tok).model.train()
    packed = next_token_loss_sum(lm_forward(model, text)["logits"], text["labels"])
    alone = torch.zeros(())
    for row, docs in zip(range(text["input_ids"].shape[0]), text["document_ids"]):
        for d in docs[docs >= 0].unique():
            ids = text["input_ids"][row][docs == d][None]
            alone = alone + next_token_loss_sum(lm_forward(model, {"input_ids": ids})["logits"], ids)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)


def test_sample_mixing_of_one_task_mixes_image_and_text_rows(mixture_dir):
    """Captions and text documents under prefix_lm share a collator: batches hold rows with and without images."""
    ldr, tok = loader(mixture_dir, sources=sources(mixture_dir, text_task=""), mixing="sample", mix_group=1)
    image = tok.convert_tokens_to_ids("<image>")
    mixed = 0
    for _, batch in zip(range(12), ldr):
        with_image = (batch["input_ids"] == image).any(1)
        assert batch.get("pixel_values", torch.zeros(0)).shape[0] == int(with_image.sum())
        mixed += 0 < int(with_image.sum()) < 4
    assert mixed


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run": {"output_dir": str(tmp_path / "runs")}, "data": data}))
    return str(path)


def test_sample_mixing_of_different_tasks_is_refused_at_config_load(tmp_path):
    text = {"name": "t", "urls": ["t.tar"], "modality": "text", "task": "causal_lm"}
    data = {"sources": [{"name": "c", "urls": ["c.tar"]}, text], "mixing": "sample"}
    with pytest.raises(ConfigError, match=r"set data.mixing: batch.*") as err:
        load_run_config(["--config", write(tmp_path, data)])
    assert "data.sources[0] prefix_lm, data.sources[1] causal_lm" in str(err.value)
    data["mixing"] = "batch"
    assert load_run_config(["--config", write(tmp_path, data)]).data.sources[1].task == "causal_lm"


@pytest.mark.parametrize(
    "source, message",
    [
        ({"urls": ["c.tar"], "task": "vqa"}, r"data.sources\[0\].task: expected one of"),
        ({"urls": ["c.tar"], "task": "causal_lm"}, r"does not fit data.sources\[0\].task causal_lm"),
        ({"urls": ["t.tar"], "modality": "text", "task": "contrastive"}, "modality text cannot feed"),
    ],
)
def test_bad_source_tasks_exit_at_config_load(tmp_path, source, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(["--config", write(tmp_path, {"sources": [source]})])


def test_a_chat_budget_the_template_exceeds_is_refused(mixture_dir):
    """Issue 20 follow-up: the demo tokenizer spends 9 + 13 tokens on `<|user|>` / `<|assistant|>`, so
    `data.max_text_len 16` leaves every chat sample 0 supervised tokens: refused when the loader is built (exit 2)."""
    with pytest.raises(ConfigError, match=r"data.max_text_len 16 leaves no room for an answer.*at least \d+"):
        loader(mixture_dir, task="chat_lm", max_text_len=16)
