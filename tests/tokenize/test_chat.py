import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.tokenize.chat import ChatProcessor, ChatTemplate, chat_collator
from open_vlm.tokenize.padding import IGNORE
from tests.tokenize.conftest import ASSISTANT, BOS, EOS, IMG, PAD, USER, WORDS, word_id, words

IMAGE = torch.zeros(4, 4, 3, dtype=torch.uint8)


def test_single_turn_hand_written(word_tokenizer):
    proc = ChatProcessor(word_tokenizer, num_image_tokens=2, prompt="what is it")
    out = proc({"image": IMAGE, "text": "a red square"})
    assert out["input_ids"].tolist() == [
        BOS,
        USER,
        IMG,
        IMG,
        *words("what is it"),
        EOS,
        ASSISTANT,
        *words("a red square"),
        EOS,
    ]
    assert out["labels"].tolist() == [IGNORE] * 9 + [*words("a red square"), EOS]
    assert out["pixel_values"] is IMAGE


def test_multi_turn_supervises_every_answer_only(word_tokenizer):
    proc = ChatProcessor(word_tokenizer, num_image_tokens=1, template=ChatTemplate(end_of_turn="bottom"))
    end = word_id("bottom")
    messages = [
        {"role": "user", "content": "what is it"},
        {"role": "assistant", "content": "a square"},
        {"role": "user", "content": "describe"},
        {"role": "assistant", "content": "red"},
    ]
    out = proc({"image": IMAGE, "messages": messages, "text": "ignored"})
    expected = [BOS, USER, IMG, *words("what is it"), end, ASSISTANT, *words("a square"), end]
    expected += [USER, word_id("describe"), end, ASSISTANT, word_id("red"), end]
    assert out["input_ids"].tolist() == expected
    supervised = [i for i, x in enumerate(out["labels"].tolist()) if x != IGNORE]
    assert supervised == [8, 9, 10, 15, 16]  # "a square <end>" and "red <end>"
    assert IMG not in out["input_ids"].tolist()[3:]  # the image only in the first user turn


def test_conversation_without_user_turn_is_rejected(word_tokenizer):
    with pytest.raises(ValueError):
        ChatProcessor(word_tokenizer, 1).encode([{"role": "assistant", "content": "a"}])


def test_collator_left_and_right(word_tokenizer):
    proc = ChatProcessor(word_tokenizer, num_image_tokens=1, prompt="what")
    samples = [proc({"image": IMAGE, "text": t}) for t in ("a red square", "a circle")]
    right = chat_collator(PAD)(samples)
    assert right["labels"][1].tolist() == [IGNORE] * 6 + [*words("a circle"), EOS, IGNORE]
    assert right["attention_mask"].tolist() == [[1] * 10, [1] * 9 + [0]]
    assert right["num_supervised"] == 4 + 3 and right["num_tokens"] == 19
    left = chat_collator(PAD, padding_side="left", pad_to_multiple=8)(samples)
    assert left["input_ids"].shape == (2, 16) and left["input_ids"][1, :7].eq(PAD).all()
    assert left["labels"][1, -3:].tolist() == [*words("a circle"), EOS]
    assert left["pixel_values"].shape == (2, 4, 4, 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.integers(0, 6), st.integers(1, 16), st.integers(1, 4))
def test_truncation_property(word_tokenizer, n_prompt, n_answer, max_len, n_img):
    proc = ChatProcessor(word_tokenizer, n_img, max_len=max_len)
    prompt = " ".join(WORDS[i % 5] for i in range(n_prompt))
    answer = " ".join(WORDS[5 + i % 5] for i in range(n_answer))
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    full = ChatProcessor(word_tokenizer, n_img, max_len=10_000).encode(messages)
    out = proc.encode(messages)
    ids, labels = out["input_ids"].tolist(), out["labels"].tolist()
    image_end = 2 + n_img
    assert ids.count(IMG) == n_img  # never cut into the image block
    assert len(ids) == min(len(full["input_ids"]), max(max_len, image_end))
    assert ids == full["input_ids"].tolist()[: len(ids)] and labels == full["labels"].tolist()[: len(ids)]
    answer_start = image_end + n_prompt + 2  # prompt, EOS, <|assistant|>
    assert all(x == IGNORE for x in labels[:answer_start])
    assert labels[answer_start:] == ids[answer_start:]
