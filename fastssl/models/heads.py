"""Heads: the MLP projection head of contrastive methods and a linear classifier."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPHead", "LinearHead"]


class MLPHead(nn.Module):
    """Projection head ``[B, in_dim] -> [B, out_dim]``.

    ``num_layers`` Linear layers; every one but the last is followed by BatchNorm1d + ReLU (the
    Linear before a BN has no bias, the BN's beta plays that role). SimCLR (v1): ``num_layers=2``,
    i.e. Linear-BN-ReLU-Linear, hidden 2048, out 128. SimCLR v2 / MoCo v3: ``num_layers=3``,
    ``last_bn=True``. ``num_layers=1`` is a single Linear.

    Args:
        in_dim: backbone ``feature_dim``.
        hidden_dim: width of the hidden layers (2048).
        out_dim: projection size (128).
        num_layers: number of Linear layers, >= 1 (2).
        last_bn: append a BatchNorm1d(out_dim, affine=False) after the last Linear (which then has no
            bias), as in SimCLR v2 / MoCo v3.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, num_layers: int = 2,
                 last_bn: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(d, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                       nn.ReLU(inplace=True)]
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class LinearHead(nn.Module):
    """Linear classifier ``[B, in_dim] -> [B, num_classes]`` for linear probing.

    ``bn=True`` puts a BatchNorm1d(in_dim, affine=False) in front (MAE's linear probe: normalises the
    frozen features without adding capacity). Weights start at N(0, 0.01), bias at 0.
    """

    def __init__(self, in_dim: int, num_classes: int, bn: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_dim, affine=False) if bn else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.bn(x))
