"""Interface 1: a batch holding invalid copies (`"__valid__": False`) trains exactly like the batch without them.

For every task's collator and its model + loss: the same loss (per supervised item), the same gradients, the
same counts; and a batch without any valid row gives loss 0 and zero gradients.
"""

import pytest
import torch

from open_vlm.config.schema import ModelConfig
from open_vlm.data.build import batch_to_device
from open_vlm.models.losses import build_loss
from open_vlm.models.registry import build_model
from open_vlm.tokenize.registry import build_processor
from tests.models.conftest import CONFIGS
from tests.tokenize.conftest import make_word_tokenizer

CAPTIONS = ["a red square on the left", "a blue circle", "green triangle on top", "a red circle on the right"]
COPIES = [(1, 0), (3, 2), (5, 0)]  # (position in the batch, index of the good sample it copies)


@pytest.fixture(scope="module")
def tok():
    return make_word_tokenizer()


def image(i: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))


def regions(i: int) -> dict:
    g = torch.Generator().manual_seed(i)
    return {"features": torch.randn(5, 16, generator=g), "boxes": torch.rand(5, 4, generator=g)}


def setup(task: str, tok):
    """(bundle, loss name, processor, collator, decoded samples) of a task."""
    torch.manual_seed(0)
    kind, config, loss, options = {
        "prefix_lm": ("paligemma", "paligemma_tiny.yaml", "next_token", {"max_len": 16}),
        "chat_lm": ("vlm", "vlm_tiny.yaml", "next_token", {"max_len": 16}),
        "causal_lm": ("vlm", "vlm_tiny.yaml", "next_token", {"max_len": 16}),
        "causal_lm_packed": ("vlm", "vlm_tiny.yaml", "next_token", {"max_len": 16, "pack": True}),
        "contrastive": ("siglip", "siglip_tiny.yaml", "siglip", {"max_len": 16}),
        "contrastive_clip": ("clip", "clip_tiny.yaml", "clip", {"max_len": 16}),
        "lxmert": ("lxmert", "lxmert_tiny.yaml", "lxmert", {"max_len": 12, "num_regions": 5}),
    }[task]
    bundle = build_model(ModelConfig(kind=kind, config=str(CONFIGS / config)), tok)
    name = task.split("_packed")[0].split("_clip")[0]
    if bundle.num_image_tokens and name in ("prefix_lm", "chat_lm"):
        options["num_image_tokens"] = bundle.num_image_tokens
    processor, collator = build_processor(name, tok, **options)
    samples = []
    for i, caption in enumerate(CAPTIONS):
        sample = {"text": caption, "__key__": f"k{i}"}
        if name == "lxmert":
            sample.update(regions(i))
        elif name != "causal_lm":
            sample["image"] = image(i, bundle.image_size)
        samples.append(sample)
    return bundle, loss, processor, collator, samples


def run(bundle, loss_name, batch):
    model = bundle.model.eval()  # no dropout: the two batches must meet the same function
    model.zero_grad(set_to_none=True)
    batch = batch_to_device(batch, torch.device("cpu"))
    result = build_loss(loss_name)(bundle.forward(model, batch), batch)
    value = result.loss / max(result.count, 1) if result.reduction == "sum" else result.loss
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(value.detach()), grads


TASKS = ["prefix_lm", "chat_lm", "causal_lm", "causal_lm_packed", "contrastive", "contrastive_clip", "lxmert"]


@pytest.mark.parametrize("task", TASKS)
def test_invalid_copies_change_nothing(task, tok):
    bundle, loss_name, processor, collate, samples = setup(task, tok)
    good = [processor(s) for s in samples]
    rows = list(good)
    for position, source in COPIES:
        rows.insert(position, {**good[source], "__valid__": False})
    mixed, clean = collate(rows), collate(good)
    if task == "causal_lm_packed":  # invalid documents are left out of the packs
        assert mixed["valid"].all() and mixed["input_ids"].shape == clean["input_ids"].shape
    else:
        assert mixed["valid"].tolist() == [i not in dict(COPIES) for i in range(len(rows))]
        assert len(mixed["input_ids"]) == len(rows)  # the shape keeps the invalid rows
    assert clean["valid"].all()
    for key in ("num_supervised", "num_tokens", "num_pairs", "num_documents"):
        assert mixed.get(key) == clean.get(key), key
    loss_mixed, grads_mixed = run(bundle, loss_name, mixed)
    loss_clean, grads_clean = run(bundle, loss_name, clean)
    assert loss_clean > 0
    assert abs(loss_mixed - loss_clean) < 1e-5 * max(1.0, loss_clean), (loss_mixed, loss_clean)
    assert grads_mixed.keys() == grads_clean.keys()
    for name, grad in grads_clean.items():
        torch.testing.assert_close(grads_mixed[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("task", TASKS)
def test_no_valid_row_gives_zero_loss_and_zero_gradients(task, tok):
    bundle, loss_name, processor, collate, samples = setup(task, tok)
    batch = collate([{**processor(s), "__valid__": False} for s in samples])
    assert not batch["valid"].any() and batch["num_supervised"] == 0
    loss, grads = run(bundle, loss_name, batch)
    assert loss == 0.0
    assert all(torch.isfinite(g).all() and not g.any() for g in grads.values())


def test_pretokenized_rows_are_masked_like_the_task(tok):
    """Pre-tokenized samples go through the task's collator: invalid copies get the same treatment."""
    bundle, _, processor, _, samples = setup("prefix_lm", tok)
    reader, collate = build_processor("prefix_lm", tok, pretokenized=True, num_image_tokens=bundle.num_image_tokens)
    stored = []
    for s in samples:
        out = processor(s)
        stored.append(reader({"arrays": {k: v for k, v in out.items() if k != "pixel_values"}, "image": s["image"]}))
    batch = collate([stored[0], {**stored[1], "__valid__": False}, stored[2]])
    assert batch["valid"].tolist() == [True, False, True]
    assert (batch["labels"][1] == -100).all() and (batch["labels"][0] != -100).any()
    assert batch["num_supervised"] == collate([stored[0], stored[2]])["num_supervised"]
