"""The LR schedule matches its closed form; parameter groups get the right decay and learning rates."""

import math

import pytest
import torch.nn as nn

from open_vlm.config.schema import OptimConfig
from open_vlm.trainer.optim import build_optimizer, lr_factor, param_groups


def test_cosine_with_warmup_steps():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 110, cfg) == pytest.approx(1 / 10)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)


def test_warmup_as_fraction():
    cfg = OptimConfig(warmup_fraction=0.25, schedule="linear", min_lr_ratio=0.0)
    assert lr_factor(0, 40, cfg) == pytest.approx(1 / 10)
    assert lr_factor(9, 40, cfg) == pytest.approx(1.0)
    assert lr_factor(25, 40, cfg) == pytest.approx(1 - 15 / 30)


def test_constant_and_inverse_sqrt():
    assert lr_factor(500, 1000, OptimConfig(schedule="constant")) == 1.0
    cfg = OptimConfig(warmup_steps=100, schedule="inverse_sqrt", min_lr_ratio=0.0)
    assert lr_factor(399, 1000, cfg) == pytest.approx(math.sqrt(100 / 400))


def test_scheduler_follows_the_closed_form():
    model = nn.Linear(4, 4)
    cfg = OptimConfig(lr=0.5, warmup_steps=3, schedule="cosine", min_lr_ratio=0.2)
    optimizer, scheduler = build_optimizer(model, cfg, max_steps=20)
    seen = []
    for _ in range(20):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5 * lr_factor(k, 20, cfg) for k in range(20)])


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.lm = nn.Linear(4, 4)


def test_decay_exclusions_and_group_lr():
    model = Tiny()
    model.lm.weight.requires_grad_(False)
    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, group_lr={"vision": 1e-5})
    groups = param_groups(model, cfg, {"vision": ["vision."], "language": ["lm."]})
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.vision.weight)]["lr"] == 1e-5 and by_param[id(model.vision.weight)]["weight_decay"] == 0.1
    assert by_param[id(model.vision.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.norm.weight)]["weight_decay"] == 0.0 and by_param[id(model.norm.weight)]["lr"] == 1e-3
    assert id(model.lm.weight) not in by_param  # frozen: not in the optimizer
    with pytest.raises(ValueError, match="visoin"):
        param_groups(model, OptimConfig(group_lr={"visoin": 1.0}), {"vision": ["vision."]})
