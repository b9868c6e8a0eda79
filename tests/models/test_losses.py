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
