"""Convolutional decoders for the generative pretext tasks (denoise, inpaint, colorize).

The encoder is the method's backbone: a ResNet's last feature map (``ResNet.forward_features``,
``[B, C, H/32, W/32]``, or ``H/8`` with the CIFAR stem). The decoder brings it back to image
resolution; a model never knows which method uses it.

- ``ConvDecoder``: ``num_upsamples`` stages of (nearest x2 upsample -> 3x3 conv -> BN -> ReLU), the
  channels halving per stage down to ``min_width``, then a 3x3 conv to ``out_channels`` (with bias,
  no activation), and a final bilinear resize to ``out_size`` when the stages do not land on it
  (odd input sizes). Upsample + conv instead of transposed convs avoids checkerboard artefacts
  (Odena et al. 2016).
- ``ChannelwiseFC``: the context encoder's channel-wise fully connected layer (Pathak et al. 2016,
  Sec. 3.1): each channel's ``h*w`` map is mapped by its own ``(h*w) x (h*w)`` linear layer (no
  cross-channel weights, so ``C (hw)^2`` parameters instead of ``C^2 (hw)^2``), followed by a 1x1
  convolution that propagates information across channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvDecoder", "ChannelwiseFC", "feature_stride"]


def feature_stride(backbone: nn.Module) -> int:
    """Downsampling factor of a ResNet's ``forward_features`` map (8 with the CIFAR stem, else 32)."""
    if not hasattr(backbone, "forward_features") or not hasattr(backbone, "cifar_stem"):
        raise ValueError(f"{type(backbone).__name__} has no spatial feature map (a ResNet is needed)")
    return 8 if backbone.cifar_stem else 32


class ConvDecoder(nn.Module):
    """``[B, in_channels, h, w] -> [B, out_channels, h * 2**num_upsamples, ...]`` (or ``out_size``).

    Args:
        in_channels: channels of the feature map (the backbone's ``feature_dim`` for a ResNet).
        out_channels: e.g. 3 (RGB) or 313 (colour bins).
        num_upsamples: number of x2 stages (>= 0).
        min_width: the narrowest stage (channels never go below it).
        out_size: if given, the output is resized (bilinear) to this square size when it differs.
    """

    def __init__(self, in_channels: int, out_channels: int, num_upsamples: int, min_width: int = 16,
                 out_size: int | None = None):
        super().__init__()
        if num_upsamples < 0 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"bad decoder shape: in {in_channels}, out {out_channels}, {num_upsamples} stages")
        stages = []
        c = in_channels
        for _ in range(num_upsamples):
            c_out = max(c // 2, min_width)
            stages += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(c, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(c, out_channels, 3, padding=1)
        self.out_size = out_size

    @staticmethod
    def stages_for(image_size: int, stride: int) -> int:
        """Number of x2 stages that bring a ``ceil(image_size / stride)`` map closest to ``image_size``
        (the result is resized to ``image_size`` if it does not land on it)."""
        h = math.ceil(image_size / stride)
        return max(0, round(math.log2(image_size / h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.stages(x))
        if self.out_size is not None and y.shape[-1] != self.out_size:
            y = F.interpolate(y, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return y


class ChannelwiseFC(nn.Module):
    """Channel-wise fully connected layer + 1x1 conv: ``[B, C, h, w] -> [B, C, h, w]`` (Pathak et al. 2016).

    ``y[b, c] = W_c x[b, c].flatten() + bias_c`` with ``W_c`` of shape ``(h*w, h*w)``, then ReLU,
    then a 1x1 convolution (C -> C) + BN + ReLU. Raises ValueError if the input's spatial size is not
    ``(h, w)``.
    """

    def __init__(self, channels: int, h: int, w: int):
        super().__init__()
        self.channels, self.h, self.w = channels, h, w
        n = h * w
        self.weight = nn.Parameter(torch.randn(channels, n, n) / math.sqrt(n))
        self.bias = nn.Parameter(torch.zeros(channels, n))
        self.mix = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (c, h, w) != (self.channels, self.h, self.w):
            raise ValueError(f"ChannelwiseFC expects [B, {self.channels}, {self.h}, {self.w}], got {tuple(x.shape)}")
        y = torch.einsum("bcn,cmn->bcm", x.reshape(b, c, h * w), self.weight) + self.bias
        return self.mix(F.relu(y).reshape(b, c, h, w))
