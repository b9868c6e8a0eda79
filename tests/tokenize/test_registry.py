import pytest
import torch

from open_vlm.tokenize.causal import PackedCausalLMCollator
from open_vlm.tokenize.pretokenized import PretokenizedProcessor
from open_vlm.tokenize.registry import build_processor, task_names
from open_vlm.tokenize.tokenizers import load_tokenizer
from tests.tokenize.conftest import IMG, PAD

IMAGE = torch.zeros(4, 4, 3, dtype=torch.uint8)
INPUTS = {
    "prefix_lm": ({"num_image_tokens": 2}, {"image": IMAGE, "text": "a red square"}),
    "chat_lm": ({"num_image_tokens": 2}, {"image": IMAGE, "text": "a red square"}),
    "causal_lm": ({"max_len": 8}, {"text": "a red square"}),
    "contrastive": ({"max_len": 6}, {"image": IMAGE, "text": "a red square"}),
    "lxmert": (
        {"num_regions": 3},
        {"__key__": "k", "text": "a red square", "features": torch.ones(2, 5), "boxes": torch.zeros(2, 4)},
    ),
}


def test_every_task_builds_and_reports_counts(word_tokenizer):
    assert task_names() == sorted(INPUTS)
    for task, (options, decoded) in INPUTS.items():
        process, collate = build_processor(task, word_tokenizer, **options)
        batch = collate([process(dict(decoded), None), process(dict(decoded), None)])
        assert isinstance(batch["num_tokens"], int) and isinstance(batch["num_supervised"], int), task
        assert batch["__meta__"] == [None, None]
        assert batch["num_tokens"] == int((batch["input_ids"] != PAD).sum()), task
    prefix, _ = build_processor("prefix_lm", word_tokenizer, num_image_tokens=2)
    assert prefix(dict(INPUTS["prefix_lm"][1]))["input_ids"][:2].tolist() == [IMG, IMG]


def test_packing_option_and_pretokenized_variant(word_tokenizer):
    _, collate = build_processor("causal_lm", word_tokenizer, max_len=8, pack=True, packed_mask="4d_float")
    assert isinstance(collate, PackedCausalLMCollator) and collate.mask == "4d_float" and collate.row_length == 8
    process, _ = build_processor("prefix_lm", word_tokenizer, pretokenized=True, num_image_tokens=2)
    assert isinstance(process, PretokenizedProcessor)


def test_unknown_task_and_option_name_the_alternatives(word_tokenizer):
    with pytest.raises(ValueError, match="did you mean 'chat_lm'"):
        build_processor("chat", word_tokenizer)
    with pytest.raises(TypeError, match="max_len"):
        build_processor("causal_lm", word_tokenizer, max_length=8)


def test_load_tokenizer_from_a_directory(word_tokenizer, tmp_path):
    word_tokenizer.save_pretrained(str(tmp_path))
    tok = load_tokenizer(str(tmp_path))
    assert (
        tok("a red <image>", add_special_tokens=False)["input_ids"]
        == word_tokenizer("a red <image>", add_special_tokens=False)["input_ids"]
    )
