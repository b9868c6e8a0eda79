import torch

from open_vlm.tokenize.contrastive import ContrastiveCollator, ContrastiveProcessor
from open_vlm.tokenize.tokenizers import is_openclip_tokenizer, load_tokenizer
from tests.tokenize.conftest import PAD, make_word_tokenizer, words

IMAGE = torch.zeros(4, 4, 3, dtype=torch.uint8)
SOT, EOT = 49406, 49407  # CLIP's start/end-of-text ids


def test_openclip_tokenizer_fixed_length_zero_padded():
    tok = load_tokenizer("openclip:ViT-B-32")
    assert is_openclip_tokenizer(tok) and not is_openclip_tokenizer(make_word_tokenizer())
    assert ContrastiveProcessor(tok).max_len == 77  # the model's context length by default
    proc = ContrastiveProcessor(tok, max_len=8)
    out = proc({"image": IMAGE, "text": "a dog"})
    assert out["input_ids"].tolist() == [SOT, 320, 1929, EOT, 0, 0, 0, 0]  # "a</w>" 320, "dog</w>" 1929
    assert out["attention_mask"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    long = proc({"image": IMAGE, "text": "a dog " * 10})["input_ids"].tolist()
    assert long[0] == SOT and long[-1] == EOT and long[1:7] == [320, 1929] * 3  # cut, EOT kept last
    assert proc({"image": IMAGE, "text": "a dog " * 10})["attention_mask"].tolist() == [1] * 8


def test_hf_tokenizer_uses_its_own_padding_side_and_pad_token():
    tok = make_word_tokenizer()
    proc = ContrastiveProcessor(tok, max_len=4)
    assert proc({"image": IMAGE, "text": "a red"})["input_ids"].tolist() == [*words("a red"), PAD, PAD]
    assert proc({"image": IMAGE, "text": "a red square on the"})["input_ids"].tolist() == words("a red square on")
    tok.padding_side = "left"
    out = ContrastiveProcessor(tok, max_len=4)({"image": IMAGE, "text": "a red"})
    assert out["input_ids"].tolist() == [PAD, PAD, *words("a red")]
    assert out["attention_mask"].tolist() == [0, 0, 1, 1]


def test_collator_stacks_and_counts():
    proc = ContrastiveProcessor(make_word_tokenizer(), max_len=5)
    batch = ContrastiveCollator()([proc({"image": IMAGE, "text": t}) for t in ("a red", "a red square on the left")])
    assert batch["input_ids"].shape == (2, 5) and batch["pixel_values"].shape == (2, 4, 4, 3)
    assert batch["num_tokens"] == 2 + 5 and batch["num_supervised"] == 0 and batch["num_pairs"] == 2


def test_collator_marks_invalid_rows_and_counts_valid_pairs(word_tokenizer):
    proc = ContrastiveProcessor(word_tokenizer, max_len=8)
    image = torch.zeros(4, 4, 3, dtype=torch.uint8)
    good = [proc({"image": image, "text": t}) for t in ("a red square", "a circle")]
    batch = ContrastiveCollator()([good[0], {**good[0], "__valid__": False}, good[1]])
    assert batch["valid"].tolist() == [True, False, True] and batch["valid"].dtype == torch.bool
    assert batch["num_pairs"] == 2 and batch["num_tokens"] == ContrastiveCollator()(good)["num_tokens"]
