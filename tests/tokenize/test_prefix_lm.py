import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.tokenize.prefix_lm import IGNORE, PrefixLMCollator, PrefixLMProcessor
from tests.tokenize.conftest import BOS, EOS, IMG, PAD, WORDS, bpe_tokenizer, word_id, words

N_IMG = 3
SEP = word_id("what")  # a visible one-token separator, so its place can be pinned


def processor(tok, max_len=32):
    return PrefixLMProcessor(tok, N_IMG, max_len, prompt="caption en", separator=" what")


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


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 8), st.integers(0, 8), st.integers(3, 14), st.booleans())
def test_truncation_keeps_image_tokens_bos_separator(word_tokenizer, n_prefix, n_suffix, max_len, has_suffix):
    tok = word_tokenizer
    prefix = " ".join(WORDS[i % 5] for i in range(n_prefix))
    suffix = " ".join(WORDS[5 + i % 5] for i in range(n_suffix)) if has_suffix else None
    out = PrefixLMProcessor(tok, N_IMG, max_len, separator=" what").encode(prefix, suffix)
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
        whole = [*words(suffix), EOS]
        assert suf == whole[: len(suf)] and (EOS in suf) == (len(suf) == len(whole))  # a cut caption: no EOS
        # the suffix is cut before the prefix: a cut prefix means the suffix is down to one token
        assert n_pre - 2 == n_prefix or len(suf) == 1
    else:
        assert suf == []


def test_cut_caption_has_no_eos(word_tokenizer):
    """Issue 20 (also): a caption cut by truncation has not ended; EOS would teach stopping early."""
    out = processor(word_tokenizer, max_len=6).encode("caption en", "a red square on the left")
    assert out["input_ids"].tolist() == [IMG] * 3 + [BOS, *words("caption en"), SEP, *words("a red")]
    assert out["labels"].tolist()[-2:] == words("a red")


def test_literal_special_tokens_in_text_are_removed(word_tokenizer):
    """Issue 20.8: LLaVA-converted text holds `<image>`; it must not become an extra image token."""
    proc = processor(word_tokenizer)
    out = proc({"image": None, "prompt": "<image>\ncaption en", "text": "a <image> red<eos> square"})
    assert out["input_ids"].tolist() == proc.encode("caption en", "a red square")["input_ids"].tolist()
    assert out["input_ids"].tolist().count(IMG) == N_IMG


def paligemma_processor(tokenizer, num_image_tokens):
    import copy

    from transformers import PaliGemmaProcessor, SiglipImageProcessor

    # the processor adds 1,152 <loc>/<seg> tokens to the tokenizer it gets: give it a copy
    processor = PaliGemmaProcessor(SiglipImageProcessor(size={"height": 8, "width": 8}), copy.deepcopy(tokenizer))
    processor.image_seq_length = num_image_tokens
    return processor


@pytest.mark.parametrize("kind", ["metaspace", "metaspace_first", "metaspace_never", "byte_level", "words"])
def test_encoding_equals_paligemma_processor(tmp_path, word_tokenizer, kind):
    """Issue 20.7: ids, token types and labels equal `PaliGemmaProcessor`'s, with and without a space marker."""
    from PIL import Image

    tok = word_tokenizer if kind == "words" else bpe_tokenizer(kind, tmp_path)
    reference = paligemma_processor(tok, N_IMG)
    ours = PrefixLMProcessor(tok, N_IMG, max_text_len=64)
    image = Image.new("RGB", (8, 8))
    pairs = [("caption en", "a red square on the left"), ("what is it", "blue"), ("", "a circle"), ("caption en", "")]
    for prompt, suffix in pairs:
        want = reference(images=[image], text=[prompt], suffix=[suffix], return_tensors="pt")
        got = ours.encode(prompt, suffix)
        for key in ("input_ids", "token_type_ids", "labels"):
            assert got[key].tolist() == want[key][0].tolist(), (kind, prompt, suffix, key)
        prompt_only = reference(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0]
        assert ours.encode(prompt, None)["input_ids"].tolist() == prompt_only.tolist()


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


CUT_PROMPT = "what is it on the left"


@pytest.mark.parametrize("max_len", [5, 6, 7, 8, 9])
def test_a_cut_prompt_keeps_the_separator_of_the_uncut_one(tmp_path, max_len):
    """Issue 20.7 at truncation: a cut prompt keeps the separator token of the uncut one (`\\n` glued to the prompt,
    as `PaliGemmaProcessor` has it), not a separator tokenized alone (`<bos> ▁what ▁is ▁ \\n ▁blue` before the fix,
    which also lost one more real token to the extra `▁`)."""
    tok = bpe_tokenizer("metaspace", tmp_path)
    full = PrefixLMProcessor(tok, 0, max_text_len=64).prefix_ids(CUT_PROMPT)  # <bos> ... ▁left \n
    out = PrefixLMProcessor(tok, 0, max_text_len=max_len).encode(CUT_PROMPT, "blue")
    types = out["token_type_ids"].tolist()
    cut = out["input_ids"].tolist()[: types.count(0)]
    assert len(cut) < len(full)  # the prompt was cut
    tokens = tok.convert_ids_to_tokens(cut)
    assert cut[-1] == full[-1], tokens  # the same separator token as the uncut prompt
    assert cut[:-1] == full[: len(cut) - 1], tokens  # the kept prompt is the uncut prompt's start, no lone '▁'
