import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.tokenize.causal import (
    CausalLMProcessor,
    PackedCausalLMCollator,
    block_causal_mask,
    causal_lm_collator,
    pack_documents,
)
from open_vlm.tokenize.padding import IGNORE
from tests.tokenize.conftest import BOS, EOS, PAD, words


def test_processor_and_collator_hand_written(word_tokenizer):
    proc = CausalLMProcessor(word_tokenizer, max_len=6)
    a, b = proc({"text": "a red square"}), proc({"text": "a circle on the left top"})
    assert a["input_ids"].tolist() == [BOS, *words("a red square"), EOS]
    assert b["input_ids"].tolist() == [BOS, *words("a circle on the left")]  # cut to 6, no EOS forced
    batch = causal_lm_collator(PAD, padding_side="left")([a, b])
    assert batch["input_ids"][0].tolist() == [PAD, BOS, *words("a red square"), EOS]
    assert batch["labels"][0].tolist() == [IGNORE, BOS, *words("a red square"), EOS]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1, 1, 1], [1] * 6]
    assert batch["num_tokens"] == 11 and batch["num_supervised"] == 5 + 5


def test_pack_documents_next_fit():
    assert pack_documents([3, 4, 2, 5, 1], 6) == [[0], [1, 2], [3, 4]]
    with pytest.raises(ValueError):
        pack_documents([7], 6)


def test_packed_batch_hand_written():
    docs = [torch.tensor([11, 12, 13]), torch.tensor([21, 22]), torch.tensor([31, 32, 33, 34])]
    samples = [{"input_ids": d, "labels": d.clone()} for d in docs]
    assert PackedCausalLMCollator(PAD, row_length=6)(samples)["input_ids"].shape == (2, 5)  # to the longest row
    batch = PackedCausalLMCollator(PAD, row_length=6, fixed_length=True)(samples)
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22, PAD], [31, 32, 33, 34, PAD, PAD]]
    assert batch["labels"].tolist() == [[IGNORE, 12, 13, IGNORE, 22, IGNORE], [IGNORE, 32, 33, 34, IGNORE, IGNORE]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["document_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    expected_row0 = [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    assert batch["attention_mask"].shape == (2, 1, 6, 6) and batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"][0, 0].int().tolist() == expected_row0
    assert batch["num_tokens"] == 9 and batch["num_supervised"] == 2 + 1 + 3 and batch["num_documents"] == 3


def test_float_mask_is_additive():
    docs = [torch.tensor([1, 2]), torch.tensor([3])]
    batch = PackedCausalLMCollator(PAD, 3, mask="4d_float")([{"input_ids": d, "labels": d} for d in docs])
    mask = batch["attention_mask"][0, 0]
    assert mask.dtype == torch.float32
    assert (mask == 0).int().tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()
    assert "attention_mask" not in PackedCausalLMCollator(PAD, 3, mask="position_ids")(
        [{"input_ids": d, "labels": d} for d in docs]
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.integers(12, 20))
def test_packing_property(lengths, row_length):
    docs = [torch.arange(100 * i, 100 * i + n) for i, n in enumerate(lengths)]
    batch = PackedCausalLMCollator(PAD, row_length)([{"input_ids": d, "labels": d.clone()} for d in docs])
    ids, doc_ids = batch["input_ids"], batch["document_ids"]
    assert ids.shape[1] <= row_length
    assert ids[doc_ids >= 0].tolist() == torch.cat(docs).tolist()  # every token once, in order
    assert batch["num_tokens"] == sum(lengths) and batch["num_supervised"] == sum(lengths) - len(lengths)
    allowed = block_causal_mask(doc_ids)[:, 0]
    i, j = torch.meshgrid(torch.arange(ids.shape[1]), torch.arange(ids.shape[1]), indexing="ij")
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    assert torch.equal(allowed, same & (j <= i))
    assert allowed.any(-1).all()  # no empty attention row (padding attends to itself)
    starts = batch["position_ids"] == 0
    assert (batch["labels"][starts] == IGNORE).all()


# The layer shapes of every tiny causal LM the packing tests build (Llama here, Mistral and Gemma 2 in test_attention).
TINY_LM_SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, attn_implementation=attn, **TINY_LM_SHAPE)
    return LlamaForCausalLM(config).eval()


def loss_sum(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize(("mask", "attn"), [("4d_bool", "sdpa"), ("4d_float", "eager"), ("position_ids", "sdpa")])
def test_packed_loss_equals_unpacked_loss(mask, attn):
    model = tiny_llama(attn)
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 3, 7, 2, 6]
    docs = [torch.randint(3, 64, (n,), generator=gen) for n in lengths]
    samples = [{"input_ids": d, "labels": d.clone()} for d in docs]
    with torch.no_grad():
        unpacked = sum(loss_sum(model(input_ids=d[None]).logits, d[None]) for d in docs)
        batch = PackedCausalLMCollator(0, row_length=12, mask=mask)(samples)
        assert batch["input_ids"].shape[0] < len(docs)  # really packed
        inputs = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
        # use_cache=False: with a cache, transformers ignores packed position ids (it must in training anyway)
        packed = loss_sum(model(**inputs, use_cache=False).logits, batch["labels"])
        # the same rows without the per-document mask mix documents: the test can tell
        leaky = loss_sum(model(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert batch["num_supervised"] == sum(n - 1 for n in lengths)
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    assert abs(float(leaky - unpacked)) > 1e-3
