"""The loss registry: contrastive losses against hand computations, next-token exact under any split."""

import pytest
import torch
import torch.nn.functional as F

from open_vlm.models.losses import IGNORE, build_loss, loss_names


def features(n=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    return {
        "image_features": image,
        "text_features": text,
        "logit_scale": torch.tensor(7.0),
        "logit_bias": torch.tensor(-3.0),
    }


def test_registry_names_and_unknown():
    assert {"next_token", "clip", "siglip", "lxmert"} <= set(loss_names())
    with pytest.raises(ValueError, match="did you mean 'siglip'"):
        build_loss("siglp")


def test_siglip_by_hand():
    out = features()
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T + out["logit_bias"]
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            sign = 1.0 if i == j else -1.0
            total += -torch.log(torch.sigmoid(sign * logits[i, j]))
    result = build_loss("siglip")(out, {})
    torch.testing.assert_close(result.loss, total / n)
    assert result.count == n and result.reduction == "mean"


def test_clip_by_hand():
    out = features()
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    n = logits.shape[0]
    image_to_text = -sum(torch.log_softmax(logits[i], 0)[i] for i in range(n)) / n
    text_to_image = -sum(torch.log_softmax(logits[:, i], 0)[i] for i in range(n)) / n
    torch.testing.assert_close(build_loss("clip")(out, {}).loss, (image_to_text + text_to_image) / 2)


def lm_batch(n=6, length=7, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (n, length), generator=g)
    prefix = torch.randint(1, length - 1, (n,), generator=g)  # uneven prefixes: uneven supervised counts
    labels[torch.arange(length) < prefix[:, None]] = IGNORE
    return logits, labels


def test_next_token_by_hand():
    logits, labels = lm_batch()
    want, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                want += -torch.log_softmax(logits[b, t - 1], 0)[labels[b, t]]
                count += 1
    result = build_loss("next_token")({"logits": logits}, {"labels": labels})
    torch.testing.assert_close(result.loss, want)
    assert result.count == count and result.reduction == "sum"


@pytest.mark.parametrize("splits", [[6], [3, 3], [1, 2, 3], [1, 1, 1, 1, 1, 1]])
def test_next_token_invariant_to_micro_batch_split(splits):
    logits, labels = lm_batch()
    loss = build_loss("next_token")
    whole = loss({"logits": logits}, {"labels": labels})
    parts, start = [], 0
    for size in splits:
        parts.append(loss({"logits": logits[start : start + size]}, {"labels": labels[start : start + size]}))
        start += size
    total, count = sum(p.loss for p in parts), sum(p.count for p in parts)
    assert count == whole.count
    torch.testing.assert_close(total / count, whole.loss / whole.count)
    if len(splits) > 1:  # the naive mean of per-micro-batch means is not the same number here
        naive = sum(p.loss / p.count for p in parts) / len(parts)
        assert not torch.allclose(naive, whole.loss / whole.count)


# --- contrastive losses against open_clip, invalid rows, fp32 ---------------------------------------------------
def leaf_features(n=6, dim=8, seed=0, dtype=torch.float32):
    out = features(n, dim, seed)
    return {k: v.to(dtype).clone().requires_grad_(True) for k, v in out.items()}


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contrastive_equals_open_clip_on_all_valid_batches(name):
    from open_clip.loss import ClipLoss, SigLipLoss

    out = leaf_features()
    args = [out["image_features"], out["text_features"], out["logit_scale"]]
    theirs = ClipLoss()(*args) if name == "clip" else SigLipLoss()(*args, out["logit_bias"])
    ours = build_loss(name)(out, {}).loss
    torch.testing.assert_close(ours, theirs)
    leaves = list(out.values())
    for a, b in zip(grads_of(ours, leaves), grads_of(theirs, leaves)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contrastive_invalid_rows_are_left_out(name):
    """Interface 1: invalid copies change neither the loss nor any gradient (they are neither rows nor negatives)."""
    out = leaf_features(n=6)
    valid = torch.tensor([True, False, True, True, False, True])
    copies = {k: v[[0, 0, 2, 3, 2, 5]] if v.dim() else v for k, v in out.items()}  # rows 1, 4: copies of good ones
    with_copies = build_loss(name)(copies, {"valid": valid})
    subset = {k: v[valid] if v.dim() else v for k, v in out.items()}
    without = build_loss(name)(subset, {})
    torch.testing.assert_close(with_copies.loss, without.loss)
    assert with_copies.count == without.count == 4
    leaves = list(out.values())
    for a, b in zip(grads_of(with_copies.loss, leaves), grads_of(without.loss, leaves)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["clip", "siglip", "next_token", "lxmert"])
def test_no_valid_row_gives_exactly_zero_and_zero_gradients(name):
    g = torch.Generator().manual_seed(0)
    if name in ("clip", "siglip"):
        outputs = leaf_features(n=3)
        batch = {}
    elif name == "next_token":
        outputs = {"logits": torch.randn(3, 5, 11, generator=g).requires_grad_(True)}
        batch = {"labels": torch.randint(0, 11, (3, 5), generator=g)}
    else:
        outputs = {
            "prediction_logits": torch.randn(3, 5, 11, generator=g).requires_grad_(True),
            "cross_relationship_score": torch.randn(3, 2, generator=g).requires_grad_(True),
        }
        batch = {"labels": torch.randint(0, 11, (3, 5), generator=g), "matched_label": torch.tensor([1, 0, 1])}
    batch["valid"] = torch.zeros(3, dtype=torch.bool)
    result = build_loss(name)(outputs, batch)
    assert float(result.loss.detach()) == 0.0 and result.count == 0
    leaves = [v for v in outputs.values() if v.requires_grad]
    for grad in grads_of(result.loss, leaves):
        assert grad is None or (torch.isfinite(grad).all() and not grad.any())


def test_next_token_and_lxmert_ignore_invalid_rows():
    logits, labels = lm_batch(n=4)
    valid = torch.tensor([True, False, True, True])
    masked = build_loss("next_token")({"logits": logits}, {"labels": labels, "valid": valid})
    subset = build_loss("next_token")({"logits": logits[valid]}, {"labels": labels[valid]})
    torch.testing.assert_close(masked.loss, subset.loss)
    assert masked.count == subset.count
    g = torch.Generator().manual_seed(1)
    outputs = {"prediction_logits": torch.randn(4, 7, 11, generator=g), "cross_relationship_score": torch.randn(4, 2)}
    batch = {"labels": labels, "matched_label": torch.tensor([1, 0, 0, 1]), "valid": valid}
    masked = build_loss("lxmert")(outputs, batch)
    subset = build_loss("lxmert")({k: v[valid] for k, v in outputs.items()}, {k: v[valid] for k, v in batch.items()})
    torch.testing.assert_close(masked.loss, subset.loss)
    assert masked.parts["masked_tokens"] == subset.parts["masked_tokens"] and masked.count == 3


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_contrastive_losses_compute_in_fp32(name):
    """Issue 20 (also): bf16 features give the fp32 loss of those same (bf16-rounded) values, not a bf16 one."""
    out = leaf_features(n=16, dim=32, dtype=torch.bfloat16)
    exact = {k: v.detach().float() for k, v in out.items()}
    got = build_loss(name)(out, {}).loss
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, build_loss(name)(exact, {}).loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_contrastive_loss_is_fp32_inside_the_trainers_autocast(kind):
    """contrastive_losses.py: 'Logits and losses are computed in fp32 whatever the features' dtype'. The trainer
    calls the loss inside `strategy.autocast()` (single / DDP with `train.precision bf16`), where the `.float()`
    casts are undone: the logit matmuls run in bf16. Same fp32 features in, the loss moves by 4e-4 (relative) and
    the feature gradients by 1.1% (clip) / 0.4% (siglip) vs the same call without autocast (= open_clip fp32)."""
    from open_vlm.models.losses import build_loss

    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(64, 32, generator=g), dim=-1)
    text = torch.nn.functional.normalize(image + 0.5 * torch.randn(64, 32, generator=g), dim=-1)
    loss_fn = build_loss(kind)

    def run(autocast: bool):
        a, b = image.clone().requires_grad_(), text.clone().requires_grad_()
        outputs = {"image_features": a, "text_features": b, "logit_scale": torch.tensor(100.0)}
        outputs["logit_bias"] = torch.tensor(-10.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(outputs, {"valid": torch.ones(64, dtype=torch.bool)}).loss
        loss.backward()
        return float(loss.detach()), torch.cat([a.grad.flatten(), b.grad.flatten()])

    (loss32, grad32), (loss_auto, grad_auto) = run(False), run(True)
    assert abs(loss_auto - loss32) <= 1e-6 * loss32, (loss_auto, loss32)
    assert float((grad_auto - grad32).norm() / grad32.norm()) < 1e-5
