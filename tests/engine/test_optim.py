"""LARS, parameter groups and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from fastssl.engine.optim import LARS, build_optimizer, param_groups, scaled_lr, warmup_cosine


def test_lars_step_matches_formula():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.6, 0.8])
    opt = LARS([p], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    g = p.grad + 0.1 * p.detach()
    trust = 0.01 * p.detach().norm() / g.norm()
    expected = p.detach() - 0.5 * trust * g
    opt.step()
    assert torch.allclose(p.detach(), expected)
    p.grad = torch.tensor([0.6, 0.8])
    buf = 0.5 * trust * g
    g2 = p.grad + 0.1 * p.detach()
    buf = 0.9 * buf + 0.5 * (0.01 * p.detach().norm() / g2.norm()) * g2
    expected2 = p.detach() - buf
    opt.step()
    assert torch.allclose(p.detach(), expected2)


def test_param_groups_exclude_bias_and_norm():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 1e-4)
    assert {tuple(p.shape) for p in decay["params"]} == {(4, 3, 3, 3), (2, 4)}
    assert no_decay["weight_decay"] == 0 and no_decay["lars"] is False and len(no_decay["params"]) == 4
    for name in ("lars", "sgd", "adamw"):
        build_optimizer(name, m, 0.1, 1e-4)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adam9", m, 0.1, 0.0)


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert f(99) < 0.01 and all(f(i) >= f(i + 1) for i in range(10, 99))
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)
