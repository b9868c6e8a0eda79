"""Issue 16: the masks of every shard convention, pinned token by token (which tokens carry loss, where the image
tokens sit, truncation keeping the answer's end), for prefix-LM (PaliGemma) and chat (composed VLM)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.data.decode import SampleError
from open_vlm.tokenize.chat import ChatProcessor, chat_collator
from open_vlm.tokenize.padding import IGNORE
from open_vlm.tokenize.prefix_lm import PrefixLMCollator, PrefixLMProcessor
from tests.tokenize.conftest import ASSISTANT, BOS, EOS, IMG, PAD, USER, WORDS, word_id, words

IMAGE = torch.zeros(4, 4, 3, dtype=torch.uint8)
N = 3  # image tokens
SEP = word_id("what")  # a visible separator, so its place can be pinned


def prefix_lm(tok, max_len=32):
    return PrefixLMProcessor(tok, N, max_len, prompt="caption en", separator=" what")


def unpack(out):
    return out["input_ids"].tolist(), out["token_type_ids"].tolist(), out["labels"].tolist()


# --- prefix-LM ---------------------------------------------------------------------------------------


def test_vqa_question_is_the_prefix_and_the_answer_the_target(word_tokenizer):
    out = prefix_lm(word_tokenizer)({"image": IMAGE, "question": "is it red", "answers": ["a square"]})
    ids, types, labels = unpack(out)
    prefix = [*[IMG] * N, BOS, *words("is it red"), SEP]
    assert ids == [*prefix, *words("a square"), EOS]
    assert types == [0] * len(prefix) + [1] * 3  # image + question bidirectional, answer causal
    assert labels == [IGNORE] * len(prefix) + [*words("a square"), EOS]
    assert out["pixel_values"] is IMAGE


@pytest.mark.parametrize(
    "sample, prefix, suffix",
    [
        ({"prefix": "describe", "suffix": "a circle", "question": "is it", "answers": ["red"]}, "describe", "a circle"),
        ({"prompt": "describe", "answers": ["red"]}, "describe", "red"),  # `prompt` stands for the question
        ({"prompt": "describe", "text": "a red square"}, "describe", "a red square"),  # a per-sample prompt
        ({"text": "a red square"}, "caption en", "a red square"),  # a caption under data.prompt
        (
            {"messages": [{"role": "user", "content": "<image>\nwhat is it"}, {"role": "assistant", "content": "red"}]},
            "what is it",
            "red",
        ),
    ],
)
def test_each_convention_becomes_prefix_and_suffix(word_tokenizer, sample, prefix, suffix):
    proc = prefix_lm(word_tokenizer)
    out = proc({"image": IMAGE, **sample})
    assert unpack(out) == unpack(proc.encode(prefix, suffix))
    assert out["input_ids"].tolist()[:N] == [IMG] * N and IMG not in out["input_ids"].tolist()[N:]


def test_text_only_samples_have_no_image(word_tokenizer):
    proc = prefix_lm(word_tokenizer)
    document = proc({"text": "a red square"})  # txt alone: all of it the target, causal
    assert unpack(document) == (
        [BOS, *words("a red square"), EOS],
        [0, 1, 1, 1, 1],
        [IGNORE, *words("a red square"), EOS],
    )
    assert "pixel_values" not in document
    qa = proc({"question": "is it red", "answers": ["a square"]})  # a text-only question: prefix-LM, no image
    assert unpack(qa)[0] == [BOS, *words("is it red"), SEP, *words("a square"), EOS]
    assert unpack(qa)[2] == [IGNORE] * 5 + [*words("a square"), EOS]


def test_long_question_gives_way_to_the_answer(word_tokenizer):
    out = prefix_lm(word_tokenizer, max_len=7)({"image": IMAGE, "question": "is it a red square", "answers": ["blue"]})
    ids, types, labels = unpack(out)
    assert ids == [*[IMG] * N, BOS, *words("is it a"), SEP, word_id("blue"), EOS]  # question cut, answer whole
    assert labels[-2:] == [word_id("blue"), EOS]
    caption = prefix_lm(word_tokenizer, max_len=6)({"image": IMAGE, "text": "a red square on the left"})
    assert unpack(caption)[0][N:] == [BOS, *words("caption en"), SEP, *words("a red")]  # data.prompt kept (big_vision)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 8), st.integers(1, 8), st.integers(3, 14))
def test_question_answer_truncation_property(word_tokenizer, n_question, n_answer, max_len):
    question = " ".join(WORDS[i % 5] for i in range(n_question))
    answer = " ".join(WORDS[5 + i % 5] for i in range(n_answer))
    out = prefix_lm(word_tokenizer, max_len)({"image": IMAGE, "question": question, "answers": [answer]})
    ids, types, labels = unpack(out)
    text = ids[N:]
    n_prefix = types.count(0) - N
    prefix, suffix = text[:n_prefix], text[n_prefix:]
    full_answer = [*words(answer), EOS]
    assert len(text) == min(2 + n_question + len(full_answer), max_len)
    assert prefix[0] == BOS and prefix[-1] == SEP and prefix[1:-1] == words(question)[: n_prefix - 2]
    if len(full_answer) <= max_len - 2:
        assert suffix == full_answer  # the answer keeps its end (and EOS) whenever it fits at all
    else:
        assert prefix == [BOS, SEP] and suffix == full_answer[: max_len - 2]  # too long: its start, no EOS
    assert labels == [IGNORE] * (N + n_prefix) + suffix


def test_collator_stacks_images_of_image_rows_only(word_tokenizer):
    proc = prefix_lm(word_tokenizer)
    rows = [proc({"text": "a red square"}), proc({"image": IMAGE + 1, "text": "a circle"}), proc({"text": "blue"})]
    batch = PrefixLMCollator(PAD)(rows)
    assert batch["pixel_values"].shape == (1, 4, 4, 3) and int(batch["pixel_values"][0, 0, 0, 0]) == 1
    assert (batch["input_ids"] == IMG).sum(1).tolist() == [0, N, 0]  # the image goes to the row with its tokens
    assert "pixel_values" not in PrefixLMCollator(PAD)([rows[0], rows[2]])


# --- chat ----------------------------------------------------------------------------------------------


def chat(tok, n_img=2, max_len=64):
    return ChatProcessor(tok, n_img, max_len=max_len, prompt="describe")


def test_image_marker_places_the_image(word_tokenizer):
    proc = chat(word_tokenizer)
    turn = {"role": "user", "content": "what is <image> it"}
    out = proc({"image": IMAGE, "messages": [turn, {"role": "assistant", "content": "red"}]})
    ids = out["input_ids"].tolist()
    assert ids == [BOS, USER, *words("what is"), IMG, IMG, word_id("it"), EOS, ASSISTANT, word_id("red"), EOS]
    messages = [
        {"role": "user", "content": "describe"},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": "<image>\nwhat is it"},  # LLaVA: the marker in a later turn takes the image
        {"role": "assistant", "content": "red"},
    ]
    ids = proc({"image": IMAGE, "messages": messages})["input_ids"].tolist()
    first_turn = [BOS, USER, word_id("describe"), EOS, ASSISTANT, *words("a square"), EOS]
    assert ids == [*first_turn, USER, IMG, IMG, *words("what is it"), EOS, ASSISTANT, word_id("red"), EOS]


def test_vqa_and_prefix_suffix_become_one_exchange(word_tokenizer):
    proc = chat(word_tokenizer)
    expected = [BOS, USER, IMG, IMG, *words("is it red"), EOS, ASSISTANT, *words("a square"), EOS]
    for sample in ({"question": "is it red", "answers": ["a square"]}, {"prefix": "is it red", "suffix": "a square"}):
        out = proc({"image": IMAGE, **sample})
        assert out["input_ids"].tolist() == expected
        assert out["labels"].tolist() == [IGNORE] * 9 + [*words("a square"), EOS]


def test_text_only_chat_and_documents(word_tokenizer):
    proc = chat(word_tokenizer)
    turns = [{"role": "user", "content": "<image> is it red"}, {"role": "assistant", "content": "a square"}]
    out = proc({"messages": turns})  # a text-only chat: no image block, the marker dropped
    assert out["input_ids"].tolist() == [BOS, USER, *words("is it red"), EOS, ASSISTANT, *words("a square"), EOS]
    assert "pixel_values" not in out
    doc = proc({"text": "a red square"})
    assert doc["input_ids"].tolist() == [BOS, *words("a red square"), EOS]
    assert doc["labels"].tolist() == [IGNORE, *words("a red square"), EOS]
    assert chat_collator(PAD)([out, doc])["attention_mask"].sum(1).tolist() == [10, 5]
    with pytest.raises(SampleError, match="needs a user turn"):
        proc({"image": IMAGE, "messages": [{"role": "assistant", "content": "red"}]})


def test_chat_question_gives_way_to_the_answer(word_tokenizer):
    out = chat(word_tokenizer, max_len=9)({"image": IMAGE, "question": "is it a red square", "answers": ["a blue"]})
    # text budget 9: BOS USER <eos> ASSISTANT (4) + answer "a blue <eos>" (3) leave 2 question tokens
    assert out["input_ids"].tolist() == [BOS, USER, IMG, IMG, *words("is it"), EOS, ASSISTANT, *words("a blue"), EOS]
    assert out["labels"].tolist()[-3:] == [*words("a blue"), EOS]
