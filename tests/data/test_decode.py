"""The shard conventions (issue 16): which members and json fields a sample's decoded text fields come from."""

import json

import pytest

from open_vlm.data.decode import SampleError, decode_sample
from tests.data.shardgen import jpeg


def raw(key="k", image=True, txt=None, **meta) -> dict:
    sample = {"__key__": key}
    if image:
        sample["jpg"] = jpeg(3)
    if txt is not None:
        sample["txt"] = txt.encode()
    if meta:
        sample["json"] = json.dumps(meta).encode()
    return sample


def fields(sample: dict, modality="image_text") -> dict:
    out = decode_sample(sample, modality, 8)
    return {k: v for k, v in out.items() if k not in ("image", "__key__")}


def test_captions_from_txt_or_json():
    assert fields(raw(txt=" a red square ")) == {"text": "a red square"}
    assert fields(raw(caption="a cat", prompt="caption en")) == {"text": "a cat", "prompt": "caption en"}
    assert fields(raw(text="a dog")) == {"text": "a dog"}
    assert fields(raw(txt="from txt", caption="from json")) == {"text": "from txt"}  # the txt member wins


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("yes", ["yes"]),
        (["2", "two", "2"], ["2", "two", "2"]),
        ([{"answer": "red", "answer_confidence": "yes"}, {"answer": "Red"}], ["red", "Red"]),  # VQAv2 annotations
        (3, ["3"]),
    ],
)
def test_vqa_question_and_answers(answer, expected):
    assert fields(raw(question="what is it?", answer=answer)) == {"question": "what is it?", "answers": expected}
    assert fields(raw(prompt="count", answers=answer))["answers"] == expected


def test_chat_messages_and_llava_conversations():
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "<image>\nwhat?"}]
    turns += [{"role": "assistant", "content": "a cat"}]
    assert fields(raw(messages=turns))["messages"] == turns
    llava = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "a cat"}]
    assert fields(raw(conversations=llava))["messages"] == [
        {"role": "user", "content": "<image>\nwhat?"},
        {"role": "assistant", "content": "a cat"},
    ]
    parts = [{"type": "text", "text": "what is "}, {"type": "image"}, {"type": "text", "text": " here?"}]
    openai = [{"role": "user", "content": parts}, {"role": "assistant", "content": "a cat"}]
    assert fields(raw(messages=openai))["messages"][0] == {"role": "user", "content": "what is <image> here?"}


def test_paligemma_prefix_suffix_and_answer_label():
    assert fields(raw(prefix="answer en what?", suffix="a cat")) == {"prefix": "answer en what?", "suffix": "a cat"}
    assert fields(raw(txt="a cat", answer_label=3))["answer_label"] == 3


def test_text_only_samples():
    assert fields(raw(image=False, txt="the circle is red"), "text") == {"text": "the circle is red"}
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert fields(raw(image=False, messages=chat), "text")["messages"] == chat


@pytest.mark.parametrize(
    "sample, kind, message",
    [
        (raw(question="what?"), "missing_field", "no txt / json caption|text, answer, messages"),
        (raw(prompt="caption en"), "missing_field", "no txt"),
        (raw(image=False, txt="x"), "missing_field", "no jpg/png/webp image"),
        (raw(messages=[{"role": "robot", "content": "x"}]), "bad_json", "role is 'robot'"),
        (raw(conversations=[{"from": "human"}, "x"]), "bad_json", "from is 'x'"),
        (raw(messages=[]), "bad_json", "non-empty list"),
        (raw(question="q", answer=[""]), "bad_json", "no non-empty answer"),
        ({"__key__": "k", "jpg": jpeg(1), "json": b"[1, 2]"}, "bad_json", "not an object"),
    ],
)
def test_bad_fields_are_counted_bad_samples(sample, kind, message):
    with pytest.raises(SampleError, match=message) as err:
        decode_sample(sample, "image_text", 8)
    assert err.value.kind == kind
