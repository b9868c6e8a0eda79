"""Packed documents through `lm_forward`: positions restart and no document sees another, for every attention
implementation and every collator mask mode (issue 20.5), on rotary (Llama) and absolute-position (GPT-2) LMs
and through the composed `vlm` kind."""

import pytest
import torch
import torch.nn.functional as F

from open_vlm.config.schema import ModelConfig
from open_vlm.models.attention import attention_implementation
from open_vlm.models.registry import build_model, lm_forward
from open_vlm.tokenize.causal import PackedCausalLMCollator
from open_vlm.tokenize.padding import IGNORE
from tests.models.conftest import CONFIGS
from tests.tokenize.test_causal import TINY_LM_SHAPE, tiny_llama

VOCAB = 64


def tiny_lm(family: str, attn: str):
    """A tiny rotary-position (Llama) or absolute-position (GPT-2) causal LM."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if family == "llama":
        return tiny_llama(attn)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_implementation=attn)
    return GPT2LMHeadModel(config).eval()


def tiny_kind(kind: str, attn: str):
    """The `vlm` or `paligemma` kind's tiny model (text-only rows), its LM on `attn`."""
    from tests.tokenize.conftest import make_word_tokenizer

    torch.manual_seed(0)
    tokenizer = make_word_tokenizer() if kind == "paligemma" else None
    model = build_model(ModelConfig(kind=kind, config=str(CONFIGS / f"{kind}_tiny.yaml")), tokenizer).model.eval()
    (model if kind == "paligemma" else model.language_model).set_attn_implementation(attn)
    return model


def loss_sum(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")


def documents():
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(5, VOCAB, (n,), generator=gen) for n in (5, 3, 7, 2, 6)]


@pytest.mark.parametrize("mask", ["4d_bool", "4d_float", "position_ids"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llama", "gpt2", "vlm", "paligemma"])
def test_packed_lm_forward_equals_unpacked(family, attn, mask):
    composed = family in ("vlm", "paligemma")
    model = tiny_kind(family, attn) if composed else tiny_lm(family, attn)
    assert attention_implementation(model) == attn
    vocab = (model.language_model if family == "vlm" else model).config.get_text_config().vocab_size
    docs = [d % vocab for d in documents()]
    batch = PackedCausalLMCollator(0, row_length=12, mask=mask)([{"input_ids": d, "labels": d.clone()} for d in docs])
    assert batch["input_ids"].shape[0] < len(docs)  # really packed
    with torch.no_grad():
        alone = [{"input_ids": d[None]} for d in docs]
        if family == "paligemma":  # token type 1 = causal text (without types its SDPA path is not causal)
            alone = [{**a, "token_type_ids": torch.ones_like(a["input_ids"])} for a in alone]
        unpacked = sum(loss_sum(lm_forward(model, a)["logits"], a["input_ids"]) for a in alone)
        packed = loss_sum(lm_forward(model, batch)["logits"], batch["labels"])
    torch.testing.assert_close(packed, unpacked, atol=1e-4, rtol=1e-5)


def test_position_ids_reach_the_model():
    """An absolute-position model's output depends on the positions given, so they must arrive."""
    model = tiny_lm("gpt2", "sdpa")
    ids = documents()[2][None]
    shifted = torch.arange(ids.shape[1])[None] + 3
    with torch.no_grad():
        plain = lm_forward(model, {"input_ids": ids})["logits"]
        moved = lm_forward(model, {"input_ids": ids, "position_ids": shifted})["logits"]
    assert not torch.allclose(plain, moved, atol=1e-4)


def sliding_lm(family: str, attn: str):
    """A tiny causal LM with a sliding-window attention of 3 tokens (Mistral; Gemma 2 alternates full/sliding)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, sliding_window=3, attn_implementation=attn, **TINY_LM_SHAPE)
    if family == "mistral":
        return MistralForCausalLM(MistralConfig(**common)).eval()
    return Gemma2ForCausalLM(Gemma2Config(head_dim=8, **common)).eval()


@pytest.mark.parametrize(("family", "attn"), [("mistral", "eager"), ("mistral", "sdpa"), ("gemma2", "eager")])
def test_packed_rows_keep_the_sliding_window(family, attn):
    """`lm_forward` hands a ready 4-D block-causal mask to the model; transformers returns a 4-D mask as is, so
    the sliding window of Mistral / Gemma 2 / Gemma 3 (PaliGemma 2's decoder) is dropped for packed rows: a
    token attends to its whole document instead of the last `sliding_window` tokens. Unpacked documents keep the
    window, so packing changes the loss (Mistral 86.91 vs 87.02). Feeding only the restarting `position_ids`
    (transformers finds the documents itself) gives the unpacked loss exactly."""
    model = sliding_lm(family, attn)
    gen = torch.Generator().manual_seed(0)
    docs = [torch.randint(5, VOCAB, (n,), generator=gen) for n in (7, 3, 8, 2, 6)]
    batch = PackedCausalLMCollator(0, row_length=12)([{"input_ids": d, "labels": d.clone()} for d in docs])
    assert batch["input_ids"].shape[0] < len(docs)  # really packed
    with torch.no_grad():
        unpacked = sum(loss_sum(lm_forward(model, {"input_ids": d[None]})["logits"], d[None]) for d in docs)
        packed = loss_sum(lm_forward(model, batch)["logits"], batch["labels"])
    torch.testing.assert_close(packed, unpacked, atol=1e-4, rtol=1e-5)
