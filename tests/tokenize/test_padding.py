import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from open_vlm.tokenize.padding import IGNORE, SequenceCollator, pad_to, padded_length


def test_pad_to_right_and_left():
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8])]
    assert pad_to(seqs, 0, 4, "right").tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert pad_to(seqs, 0, 4, "left").tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    with pytest.raises(ValueError):
        pad_to(seqs, 0, 4, "middle")


def test_padded_length_rounds_up_and_checks_fixed_length():
    assert padded_length([3, 9], 8) == 16
    assert padded_length([3, 8], 8) == 8
    assert padded_length([3, 9], 64) == 64
    assert padded_length([3, 9], 1, length=12) == 12
    with pytest.raises(ValueError):
        padded_length([13], 1, length=12)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 20), min_size=1, max_size=5),
    multiple=st.sampled_from([1, 8, 64]),
    side=st.sampled_from(["right", "left"]),
)
def test_collator_padding_property(lengths, multiple, side):
    samples = [
        {"input_ids": torch.arange(1, n + 1), "labels": torch.arange(1, n + 1).masked_fill(torch.arange(n) < 1, IGNORE)}
        for n in lengths
    ]
    batch = SequenceCollator({"input_ids": 0, "labels": IGNORE}, side, multiple)(samples)
    length = batch["input_ids"].shape[1]
    assert length % multiple == 0 and max(lengths) <= length < max(lengths) + multiple
    for row, n in enumerate(lengths):
        real = batch["attention_mask"][row].bool()
        assert int(real.sum()) == n
        # real tokens are contiguous on the far side from the padding
        assert real.tolist() == (
            [True] * n + [False] * (length - n) if side == "right" else [False] * (length - n) + [True] * n
        )
        assert batch["input_ids"][row][real].tolist() == list(range(1, n + 1))
        assert (batch["input_ids"][row][~real] == 0).all() and (batch["labels"][row][~real] == IGNORE).all()
    assert batch["num_tokens"] == sum(lengths)
    # each row supervises n - 1 tokens (the first is -100); the shift drops column 0 only
    assert batch["num_supervised"] == sum(n - 1 for n in lengths)
