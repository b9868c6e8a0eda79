"""Issue 16: text-only rows in `paligemma` and `vlm` runs: no image tokens and no pixels train the language model
alone (causal, as text), batches may mix image and text rows, and the vision side keeps a (zero) gradient."""

import pytest
import torch

from open_vlm.config.schema import ModelConfig
from open_vlm.data.decode import normalize_images
from open_vlm.models.losses import next_token_loss_sum
from open_vlm.models.registry import build_model, lm_forward
from open_vlm.tokenize.chat import ChatProcessor, chat_collator
from open_vlm.tokenize.prefix_lm import PrefixLMCollator, PrefixLMProcessor
from tests.models.conftest import CONFIGS
from tests.tokenize.conftest import PAD, make_word_tokenizer


def tiny(kind: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, config=str(CONFIGS / f"{kind}_tiny.yaml"), attn_implementation=attn)
    return build_model(cfg, make_word_tokenizer())


def rows(kind: str, bundle) -> list[dict]:
    """Two image rows and two text-only rows of the kind's own task (captions, a question, a document)."""
    tok = make_word_tokenizer()
    if kind == "paligemma":
        proc = PrefixLMProcessor(tok, bundle.num_image_tokens, 16, prompt="caption en")
    else:
        proc = ChatProcessor(tok, bundle.num_image_tokens, 16, prompt="describe")
    gen = torch.Generator().manual_seed(1)
    image = [torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen) for _ in range(2)]
    samples = [
        {"image": image[0], "text": "a red square on the left"},
        {"question": "what is it", "answers": ["a blue circle"]},
        {"image": image[1], "question": "is it red", "answers": ["a square"]},
        {"text": "the circle on the right is green"},
    ]
    return [proc(s) for s in samples]


def collate(kind: str, samples: list[dict]) -> dict:
    batch = (PrefixLMCollator(PAD) if kind == "paligemma" else chat_collator(PAD))(samples)
    if "pixel_values" in batch:
        batch["pixel_values"] = normalize_images(batch["pixel_values"])
    return batch


def row_losses(model, kind: str, samples: list[dict]) -> torch.Tensor:
    batch = collate(kind, samples)
    logits = lm_forward(model, batch)["logits"]
    return torch.stack(
        [next_token_loss_sum(logits[i : i + 1], batch["labels"][i : i + 1]) for i in range(len(samples))]
    )


@pytest.mark.parametrize("kind", ["paligemma", "vlm"])
def test_a_mixed_batch_equals_its_rows_alone(kind):
    bundle = tiny(kind)
    model = bundle.model.eval()
    samples = rows(kind, bundle)
    with torch.no_grad():
        mixed = row_losses(model, kind, samples)
        alone = torch.cat([row_losses(model, kind, [s]) for s in samples])
    torch.testing.assert_close(mixed, alone, atol=1e-4, rtol=1e-4)
    assert (mixed > 0).all()


def test_paligemma_text_rows_are_causal_without_token_types():
    """Without token types PaliGemma's SDPA attention is not causal: text-only calls get type 1 (causal)."""
    model = tiny("paligemma").model.eval()
    ids = torch.randint(10, 28, (1, 8), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, -1] = 28 if int(ids[0, -1]) != 28 else 27
    with torch.no_grad():
        before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(before[0, :-1], after[0, :-1])  # the last token changed nothing before it


@pytest.mark.parametrize("kind", ["paligemma", "vlm"])
def test_text_only_training_keeps_vision_gradients_at_zero(kind):
    """DDP needs a gradient for every parameter: the vision side runs at weight zero, the loss is unchanged."""
    bundle = tiny(kind)
    model = bundle.model
    text_rows = [s for s in rows(kind, bundle) if "pixel_values" not in s]
    batch = collate(kind, text_rows)
    assert "pixel_values" not in batch
    with torch.no_grad():
        want = next_token_loss_sum(lm_forward(model.eval(), batch)["logits"], batch["labels"])
    model.train()
    loss = next_token_loss_sum(lm_forward(model, batch)["logits"], batch["labels"])
    loss.backward()
    torch.testing.assert_close(loss.detach(), want)
    vision = [m for name, m in model.named_modules() if name.endswith(("vision_tower", "projector"))]
    grads = [p.grad for m in vision for p in m.parameters()]
    assert grads and all(g is not None and not g.any() for g in grads)
    language = model.language_model if kind == "vlm" else model.model.language_model
    assert any(p.grad is not None and p.grad.any() for p in language.parameters())


@pytest.mark.parametrize("task", ["causal_lm", "chat_lm"])
def test_paligemma_on_tasks_without_token_types_stays_causal(task):
    """`data.task` may name `causal_lm` or `chat_lm` for `model.kind paligemma` (nothing refuses it). Their
    batches carry no `token_type_ids`; PaliGemma's config turns on `use_bidirectional_attention`, and without
    token types transformers builds no mask under SDPA (the default), so every token attends to the future:
    changing the last text token changes the logits of every earlier position. Eager attention (and the same
    rows with token_type_ids = 1) stay causal."""
    from open_vlm.config.schema import ModelConfig
    from open_vlm.data.build import batch_to_device
    from open_vlm.models.registry import build_model
    from open_vlm.tokenize.registry import build_processor
    from tests.models.conftest import CONFIGS
    from tests.tokenize.conftest import make_word_tokenizer, word_id

    tok = make_word_tokenizer()
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="paligemma", config=str(CONFIGS / "paligemma_tiny.yaml")), tok)
    model = bundle.model.train()
    assert bundle.model.config.text_config._attn_implementation == "sdpa"
    options = {"max_len": 32} if task == "causal_lm" else {"max_len": 32, "num_image_tokens": bundle.num_image_tokens}
    processor, collate = build_processor(task, tok, **options)
    image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def logits(text):
        batch = batch_to_device(collate([processor({"text": text, "image": image, "__key__": "k"})]), "cpu")
        assert "token_type_ids" not in batch
        with torch.no_grad():
            return bundle.forward(model, batch)["logits"][0], batch["input_ids"][0]

    a, ids_a = logits("a red square on the left")
    b, ids_b = logits("a red square on the right")
    changed = int((ids_a != ids_b).nonzero()[0])
    assert ids_a[changed] == word_id("left") and ids_b[changed] == word_id("right")
    leak = float((a[:changed] - b[:changed]).abs().max())
    assert leak == 0.0, f"positions before the changed token moved by {leak}"
