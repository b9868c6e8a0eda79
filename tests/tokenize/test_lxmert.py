import torch

from open_vlm.tokenize.lxmert import LxmertCollator, LxmertProcessor, pad_regions
from open_vlm.tokenize.padding import IGNORE
from tests.tokenize.conftest import CLS, MASK, PAD, SEP, WORDS, words

LONG = " ".join(WORDS[i % len(WORDS)] for i in range(40))


def sample(key: str, text: str = LONG, regions: int = 3, dim: int = 8) -> dict:
    gen = torch.Generator().manual_seed(len(key))
    return {
        "__key__": key,
        "text": text,
        "features": torch.randn(regions, dim, generator=gen),
        "boxes": torch.rand(regions, 4, generator=gen),
    }


def test_masks_are_a_pure_function_of_seed_and_key(word_tokenizer):
    proc = LxmertProcessor(word_tokenizer, num_regions=4, max_len=42, seed=7)
    a, again = proc(sample("k1")), LxmertProcessor(word_tokenizer, num_regions=4, max_len=42, seed=7)(sample("k1"))
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert not torch.equal(a["labels"], proc(sample("k2"))["labels"])
    other_seed = LxmertProcessor(word_tokenizer, num_regions=4, max_len=42, seed=8)(sample("k1"))
    assert not torch.equal(a["labels"], other_seed["labels"])


def test_masking_rules_and_80_10_10_rates(word_tokenizer):
    proc = LxmertProcessor(word_tokenizer, num_regions=4, max_len=42)
    original = torch.tensor([CLS, *words(LONG), SEP])
    special = set(word_tokenizer.all_special_ids)
    picked = masked = replaced = 0
    for i in range(200):
        out = proc(sample(f"key{i}"))
        ids, labels = out["input_ids"], out["labels"]
        assert ids[0] == CLS and ids[-1] == SEP and labels[0] == IGNORE and labels[-1] == IGNORE
        chosen = labels != IGNORE
        assert torch.equal(labels[chosen], original[chosen])  # targets are the original tokens
        assert torch.equal(ids[~chosen], original[~chosen])  # nothing else changes
        assert all(int(t) not in special for t in ids[chosen & (ids != MASK) & (ids != original)])
        picked += int(chosen.sum())
        masked += int((ids[chosen] == MASK).sum())
        replaced += int((chosen & (ids != MASK) & (ids != original)).sum())
    candidates = 200 * 40
    assert abs(picked / candidates - 0.15) < 0.02
    assert abs(masked / picked - 0.8) < 0.05
    # 10% random tokens, of which 1 in len(random_ids) happens to equal the original
    assert abs(replaced / picked - 0.1 * (1 - 1 / len(proc.random_ids))) < 0.04


def test_regions_padded_and_truncated_to_k():
    feats, boxes = torch.arange(12.0).view(3, 4), torch.rand(3, 4)
    out = pad_regions(feats, boxes, 5)
    assert out["visual_feats"].shape == (5, 4) and torch.equal(out["visual_feats"][:3], feats)
    assert (out["visual_feats"][3:] == 0).all() and (out["visual_pos"][3:] == 0).all()
    assert out["visual_attention_mask"].tolist() == [1, 1, 1, 0, 0]
    cut = pad_regions(feats, boxes, 2)
    assert torch.equal(cut["visual_feats"], feats[:2]) and cut["visual_attention_mask"].tolist() == [1, 1]


def batch_samples(tok, texts):
    proc = LxmertProcessor(tok, num_regions=4, max_len=12)
    return [proc(sample(f"k{i}", t)) for i, t in enumerate(texts)]


def test_itm_negatives_take_another_caption_deterministically(word_tokenizer):
    texts = ["a red square", "a blue circle on the left", "green triangle", "the top right"]
    samples = batch_samples(word_tokenizer, texts)
    originals = [[CLS, *words(t), SEP] for t in texts]
    batch = LxmertCollator(PAD, seed=3, negative_prob=1.0)(samples)
    assert batch["matched_label"].tolist() == [0, 0, 0, 0]
    assert batch["num_supervised"] == 0 and (batch["labels"] == IGNORE).all()
    for row in range(4):
        n = int(batch["attention_mask"][row].sum())
        text = batch["input_ids"][row, :n].tolist()
        assert text in originals and text != originals[row]  # another sample's caption, uncorrupted
    assert torch.equal(batch["visual_feats"], torch.stack([s["visual_feats"] for s in samples]))  # images stay

    matched = LxmertCollator(PAD, negative_prob=0.0)(samples)
    assert matched["matched_label"].tolist() == [1, 1, 1, 1]
    assert matched["num_supervised"] == sum(int((s["labels"] != IGNORE).sum()) for s in samples)

    draws = [LxmertCollator(PAD, seed=s)(samples)["matched_label"].tolist() for s in range(8)]
    assert draws[0] == LxmertCollator(PAD, seed=0)(samples)["matched_label"].tolist()
    assert len({tuple(d) for d in draws}) > 1  # the seed matters


def test_identical_captions_are_never_negatives(word_tokenizer):
    samples = batch_samples(word_tokenizer, ["a red square", "a red square"])
    assert LxmertCollator(PAD, negative_prob=1.0)(samples)["matched_label"].tolist() == [1, 1]


def test_batch_feeds_transformers_lxmert(word_tokenizer):
    from transformers import LxmertConfig, LxmertForPreTraining

    torch.manual_seed(0)
    config = LxmertConfig(
        vocab_size=len(word_tokenizer),
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        l_layers=1,
        x_layers=1,
        r_layers=1,
        visual_feat_dim=8,
        visual_pos_dim=4,
        task_obj_predict=False,
        task_qa=False,
    )
    texts = ["a red square on the left", "a blue circle on the right", "the top left green triangle"]
    batch = LxmertCollator(PAD, seed=1)(batch_samples(word_tokenizer, texts))
    # HF's MLM term is a mean over masked tokens (NaN with none; our `lxmert` loss guards that case).
    assert (batch["labels"] != -100).any()
    keys = ("input_ids", "token_type_ids", "attention_mask", "visual_feats", "visual_pos", "visual_attention_mask")
    out = LxmertForPreTraining(config)(
        **{k: batch[k] for k in keys}, labels=batch["labels"], matched_label=batch["matched_label"]
    )
    assert torch.isfinite(out.loss)


def test_invalid_rows_are_never_negatives_and_draw_as_without_them(word_tokenizer):
    """Interface 1: invalid copies get matched_label -100 and no MLM targets, and are nobody's negative; the valid
    rows draw what they draw in the batch without the copies (so the loss does not depend on bad samples)."""
    texts = ["a red square", "a blue circle on the left", "green triangle", "the top right"]
    good = batch_samples(word_tokenizer, texts)
    rows = [good[0], {**good[1], "__valid__": False}, good[1], {**good[3], "__valid__": False}, good[2], good[3]]
    for seed in range(6):
        mixed = LxmertCollator(PAD, seed=seed, negative_prob=0.7)(rows)
        clean = LxmertCollator(PAD, seed=seed, negative_prob=0.7)(good)
        valid = mixed["valid"]
        assert valid.tolist() == [True, False, True, False, True, True]
        assert mixed["matched_label"][~valid].tolist() == [IGNORE, IGNORE] and (mixed["labels"][~valid] == IGNORE).all()
        assert mixed["matched_label"][valid].tolist() == clean["matched_label"].tolist()
        n = clean["input_ids"].shape[1]
        assert torch.equal(mixed["input_ids"][valid][:, :n], clean["input_ids"])
        assert mixed["num_supervised"] == clean["num_supervised"] and mixed["num_tokens"] == clean["num_tokens"]
