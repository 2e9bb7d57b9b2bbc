"""Helpers shared by the generative methods (denoise, inpaint, colorize): flag types, the ResNet check,
pixel <-> normalized conversions on the device, and the decoder built on the backbone's feature map."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from fastssl.data.recipes import IMAGENET_MEAN, IMAGENET_STD
from fastssl.errors import ConfigError
from fastssl.models.decoder import ConvDecoder, feature_stride


def unit_interval(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite float >= 0."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


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
