"""The context encoder's adversarial discriminator (Pathak et al. 2016, Sec. 3.2 and the released
``train.lua`` netD, itself DCGAN's discriminator, Radford et al. 2016).

``Discriminator(in_channels, size, width)``: ``[B, C, size, size] -> [B]`` logits (real > 0).
Stages of 4x4 stride-2 convolutions (the first without BatchNorm), LeakyReLU 0.2, channels doubling
from ``width`` until the map is at most 4 px, then one convolution over the whole remaining map to a
single logit. The released code: 64 px region, width 64, 64 -> 32 -> 16 -> 8 -> 4 -> 1 (a sigmoid on
top; here the loss takes logits, ``binary_cross_entropy_with_logits``, which is the same math, stable).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """DCGAN-style image discriminator. Raises ValueError for size < 2 or width < 1."""

    def __init__(self, in_channels: int, size: int, width: int = 32):
        super().__init__()
        if size < 2 or width < 1 or in_channels < 1:
            raise ValueError(f"bad discriminator shape: {in_channels} channels, {size} px, width {width}")
        layers: list[nn.Module] = []
        c_in, c, s = in_channels, width, size
        while s > 4:
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=not layers))
            if layers[:-1]:  # BatchNorm from the second stage on (DCGAN)
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in, c, s = c, c * 2, s // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 1, s)  # the whole remaining s x s map -> one logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(1).mean(1)
