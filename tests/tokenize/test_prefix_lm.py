import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.tokenize.prefix_lm import IGNORE, PrefixLMCollator, PrefixLMProcessor
from tests.tokenize.conftest import BOS, EOS, IMG, PAD, WORDS, word_id, words

N_IMG = 3
SEP = word_id("what")  # a visible one-token separator, so its place can be pinned


def processor(tok, max_len=32):
    return PrefixLMProcessor(tok, N_IMG, max_len, prompt="caption en", separator="what")


def test_hand_written_example(word_tokenizer):
    out = processor(word_tokenizer).encode("caption en", "a red square")
    assert out["input_ids"].tolist() == [IMG] * 3 + [BOS, *words("caption en"), SEP, *words("a red square"), EOS]
    assert out["token_type_ids"].tolist() == [0] * 7 + [1] * 4
    assert out["labels"].tolist() == [IGNORE] * 7 + [*words("a red square"), EOS]


def test_generation_prompt_has_no_suffix(word_tokenizer):
    out = processor(word_tokenizer).encode("caption en", None)
    assert out["input_ids"].tolist() == [IMG] * 3 + [BOS, *words("caption en"), SEP]
    assert (out["labels"] == IGNORE).all() and (out["token_type_ids"] == 0).all()


def test_collator_pads_right_and_counts(word_tokenizer):
    proc = processor(word_tokenizer)
    image = torch.zeros(4, 4, 3, dtype=torch.uint8)
    samples = [proc({"image": image, "text": t}) for t in ("a red square", "a circle on the left")]
    batch = PrefixLMCollator(PAD, pad_to_multiple=8)(samples)
    assert batch["input_ids"].shape == (2, 16)  # 13 tokens rounded up to 8
    assert batch["labels"][0].tolist() == [IGNORE] * 7 + [*words("a red square"), EOS] + [IGNORE] * 5
    assert batch["token_type_ids"][0].tolist() == [0] * 7 + [1] * 4 + [0] * 5
    assert batch["attention_mask"].sum(1).tolist() == [11, 13]
    assert (batch["input_ids"][0, 11:] == PAD).all()
    assert batch["num_tokens"] == 24
    assert batch["num_supervised"] == 4 + 6
    assert batch["pixel_values"].shape == (2, 4, 4, 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8), st.integers(3, 14), st.booleans())
def test_truncation_keeps_image_tokens_bos_separator_and_eos(word_tokenizer, n_prefix, n_suffix, max_len, has_suffix):
    tok = word_tokenizer
    prefix = " ".join(WORDS[i % 5] for i in range(n_prefix))
    suffix = " ".join(WORDS[5 + i % 5] for i in range(n_suffix)) if has_suffix else None
    out = PrefixLMProcessor(tok, N_IMG, max_len, separator="what").encode(prefix, suffix)
    ids, types, labels = out["input_ids"].tolist(), out["token_type_ids"].tolist(), out["labels"].tolist()
    assert ids[:N_IMG] == [IMG] * N_IMG and IMG not in ids[N_IMG:]
    text = ids[N_IMG:]
    full = 2 + n_prefix + ((n_suffix + 1) if has_suffix else 0)
    assert len(text) == min(full, max_len)  # cut only when too long, and then exactly to the budget
    n_pre = types.count(0) - N_IMG
    pre, suf = text[:n_pre], text[n_pre:]
    assert pre[0] == BOS and pre[-1] == SEP and pre[1:-1] == words(prefix)[: n_pre - 2]
    assert types == [0] * (N_IMG + n_pre) + [1] * len(suf)
    assert labels == [IGNORE] * (N_IMG + n_pre) + suf
    if has_suffix:
        assert suf[-1] == EOS and suf[:-1] == words(suffix)[: len(suf) - 1]
        # the suffix is cut before the prefix: a cut prefix means the suffix is down to its EOS
        assert n_pre - 2 == n_prefix or len(suf) == 1
    else:
        assert suf == []


def test_loss_matches_transformers_paligemma(word_tokenizer):
    from open_vlm.config.schema import ModelConfig
    from open_vlm.data.decode import normalize_images
    from open_vlm.models.losses import next_token_loss_sum
    from open_vlm.models.registry import build_model

    torch.manual_seed(0)
    bundle = build_model(ModelConfig(kind="paligemma", config="configs/models/paligemma_tiny.yaml"), word_tokenizer)
    proc = PrefixLMProcessor(word_tokenizer, bundle.num_image_tokens, 16, prompt="caption en")
    gen = torch.Generator().manual_seed(1)
    texts = ["a red square on the left", "a circle", "blue triangle on top"]
    samples = [
        proc({"image": torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen), "text": t}) for t in texts
    ]
    batch = PrefixLMCollator(word_tokenizer.pad_token_id)(samples)
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
    inputs["pixel_values"] = normalize_images(batch["pixel_values"])
    model = bundle.model.train()
    out = model(**inputs, labels=batch["labels"])
    ours = next_token_loss_sum(out.logits, batch["labels"]) / batch["num_supervised"]
    assert batch["num_supervised"] == sum(len(t.split()) + 1 for t in texts)
    torch.testing.assert_close(ours, out.loss, atol=1e-5, rtol=1e-5)
