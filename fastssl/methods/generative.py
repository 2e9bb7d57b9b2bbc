"""Helpers shared by the generative methods (denoise, inpaint, colorize): flag types, the ResNet check,
pixel <-> normalized conversions on the device, and the decoder built on the backbone's feature map."""

from __future__ import annotations

import torch
from torch import nn

from fastssl.base.argtypes import nonneg_float as non_negative  # noqa: F401  (flag types of the generative methods)
from fastssl.base.argtypes import positive_int, ranged  # noqa: F401
from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD
from fastssl.base.errors import ConfigError
from fastssl.models.decoder import ConvDecoder, feature_stride

unit_interval = ranged(float, 0, 1, hi_open=True)  # [0, 1)


def require_resnet(cfg: dict, method: str) -> None:
    """ConfigError unless ``--arch`` is a ResNet (the decoder needs a spatial feature map)."""
    if not str(cfg["arch"]).startswith("resnet"):
        raise ConfigError(f"--arch {cfg['arch']}: {method} decodes the backbone's spatial feature map and "
                          "needs a ResNet (resnet18, resnet50)")


def _stats(x: torch.Tensor):
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return mean, std


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized views ``[B, 3, H, W]`` -> pixels in [0, 1] (same device and dtype, unclamped)."""
    mean, std = _stats(x)
    return x * std + mean


def from_pixels(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the pipeline's normalization (inverse of ``to_pixels``)."""
    mean, std = _stats(x)
    return (x - mean) / std


def image_decoder(backbone: nn.Module, image_size: int, out_channels: int = 3, upsample_to: int | None = None,
                  min_width: int = 8) -> ConvDecoder:
    """A ConvDecoder from the backbone's last feature map to ``upsample_to`` px (default ``image_size``)."""
    stride = feature_stride(backbone)
    target = upsample_to or image_size
    n_up = ConvDecoder.stages_for(image_size, stride) - ConvDecoder.stages_for(image_size, image_size // target)
    return ConvDecoder(backbone.feature_dim, out_channels, n_up, min_width=min_width, out_size=target)
