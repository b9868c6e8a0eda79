"""Issue 16: which decoded fields each task reads, the seeded answer choice, and unfit samples."""

from collections import Counter

import pytest
import torch

from open_vlm.data.decode import SampleError
from open_vlm.tokenize.causal import CausalLMProcessor
from open_vlm.tokenize.contrastive import ContrastiveProcessor
from open_vlm.tokenize.fields import CAPTION, DOCUMENT, QA, Exchange, choose_answer, prefix_lm_exchange
from open_vlm.tokenize.lxmert import LxmertProcessor
from tests.tokenize.conftest import CLS, SEP, words

IMAGE = torch.zeros(4, 4, 3, dtype=torch.uint8)
ANSWERS = ["left", "on the left", "left", "the left"]


def test_choice_is_seeded_by_the_order_alone():
    picks = [choose_answer({"answers": ANSWERS, "__order__": (7, 1, p)}) for p in range(400)]
    again = [choose_answer({"answers": ANSWERS, "__order__": (7, 1, p)}) for p in range(400)]
    assert picks == again  # a resumed run (or another worker) picks the same answer at the same position
    counts = Counter(picks)
    assert set(counts) == set(ANSWERS) and 150 < counts["left"] < 250  # "left" is half of the annotations
    other_seed = [choose_answer({"answers": ANSWERS, "__order__": (8, 1, p)}) for p in range(400)]
    assert other_seed != picks
    assert choose_answer({"answers": ANSWERS}) == "left"  # no order (tools, inference): the first


@pytest.mark.parametrize(
    "sample, expected",
    [
        ({"prefix": "p", "suffix": "s", "question": "q", "answers": ["a"], "text": "t"}, Exchange("p", "s", QA)),
        ({"question": "q", "prompt": "p", "answers": ["a"], "text": "t"}, Exchange("q", "a", QA)),
        ({"prompt": "p", "answers": ["a"]}, Exchange("p", "a", QA)),
        (
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
            Exchange("u", "a", QA),
        ),
        ({"image": IMAGE, "text": "t", "prompt": "p"}, Exchange("p", "t", QA)),
        ({"image": IMAGE, "text": "t"}, Exchange("caption en", "t", CAPTION)),
        ({"text": "t"}, Exchange(None, "t", DOCUMENT)),  # text-only, no prompt: a document
    ],
)
def test_prefix_lm_precedence(sample, expected):
    assert prefix_lm_exchange(sample, "caption en") == expected


@pytest.mark.parametrize(
    "sample, message",
    [
        ({"image": IMAGE, "answers": ["a"]}, "a question"),
        ({"image": IMAGE, "prompt": "p"}, "prefix/suffix, question\\+answer, messages or a caption"),
        ({"messages": [{"role": "user", "content": "u"}] * 2}, "one user turn and its answer"),
    ],
)
def test_unfit_samples_are_bad_samples_not_data_prompt(sample, message):
    with pytest.raises(SampleError, match=message) as err:
        prefix_lm_exchange(sample, "caption en")
    assert err.value.kind == "unfit_for_task"


def test_other_tasks_read_their_fields(word_tokenizer):
    vqa = {"image": IMAGE, "question": "what is it", "answers": ["red"], "__key__": "k"}
    for processor in (ContrastiveProcessor(word_tokenizer, 8), CausalLMProcessor(word_tokenizer, 8)):
        with pytest.raises(SampleError) as err:
            processor(vqa)
        assert err.value.kind == "unfit_for_task"
    regions = {"features": torch.zeros(2, 4), "boxes": torch.zeros(2, 4), "__key__": "k"}
    out = LxmertProcessor(word_tokenizer, 2, mlm_prob=0.0)({**regions, "question": "what is it", "answers": ["a"]})
    assert out["input_ids"].tolist() == [CLS, *words("what is it"), SEP]  # LXMERT reads the question as text
    with pytest.raises(SampleError):
        LxmertProcessor(word_tokenizer, 2)({**regions, "answers": ["a"]})
