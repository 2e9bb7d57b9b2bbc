"""Helpers shared by the generative methods (denoise, inpaint, colorize): flag types, the ResNet check,
pixel <-> normalized conversions on the device, and the decoder built on the backbone's feature map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.base.argtypes import nonneg_float as non_negative  # noqa: F401  (flag types of the generative methods)
from fastssl.base.argtypes import positive_int, ranged  # noqa: F401
from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD
from fastssl.base.errors import ConfigError
from fastssl.models.decoder import ConvDecoder, feature_stride
from fastssl.models.inputs import StandardizedInput
from fastssl.ops import masked_patch_mse, patchify, unpatchify

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


def add_norm_pix_arg(group, default: int) -> None:
    """``--norm-pix P``: reconstruct per-patch normalized pixels of P x P patches (0: raw pixels)."""
    group.add_argument("--norm-pix", type=ranged(int, 0, None), default=default, metavar="P",
                       help="targets are per-patch standardized pixels of P x P patches, MAE's norm_pix_loss "
                            "(0: the normalized view's raw values); P >= 2 divides --image-size (inpaint: not with "
                            "--adv-weight). mae's --norm-pix is an on/off switch instead")


def check_norm_pix(cfg: dict) -> None:
    """ConfigError unless ``--norm-pix`` is 0 or divides ``--image-size``."""
    p, s = cfg.get("norm_pix", 0), cfg["image_size"]
    if p and (p < 2 or s % p):
        raise ConfigError(f"--norm-pix {p} must be 0 or a patch side >= 2 that divides --image-size {s}")


INPUT_NORMS = ("none", "image")


def add_input_norm_arg(group, default: str) -> None:
    """``--input-norm``: ``image`` standardizes each image per channel as the backbone's first step."""
    group.add_argument("--input-norm", choices=INPUT_NORMS, default=default,
                       help="'image': each input image standardized per channel over its own pixels as the "
                            "backbone's first step (fastssl.models.inputs.StandardizedInput; evaluation sees the "
                            "same); 'none': the pipeline's normalized views as they are")


def wrap_input(backbone: nn.Module, cfg: dict) -> nn.Module:
    """The backbone, inside :class:`StandardizedInput` with ``--input-norm image`` (a run saved before the flag
    existed: none)."""
    return StandardizedInput(backbone) if cfg.get("input_norm", "none") == "image" else backbone


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                        norm_pix: int) -> torch.Tensor:
    """Weighted mean squared error of an image reconstruction, fp32 scalar.

    pred, target: ``[B, C, H, W]`` in the normalized views' units; weight: ``[B, 1, H, W]`` >= 0 per pixel
    (None: every pixel, weight 1). ``norm_pix = 0``: ``sum w (pred - target)^2 / (C sum w)``. ``norm_pix = P``:
    the target's P x P patches are each standardized (MAE's norm_pix_loss, He et al. 2021 sec. 3: (x - mean) /
    sqrt(var + 1e-6), unbiased, over the patch's P*P*C values) and the error is taken per patch against the
    prediction's raw values, each patch weighted by its mean pixel weight (``fastssl.ops.masked_patch_mse``).
    The target's brightness and contrast per patch no longer count: what is left is local structure.
    """
    if not norm_pix:
        if weight is None:
            return F.mse_loss(pred.float(), target.float())
        err = (pred.float() - target.float()) ** 2 * weight
        return err.sum() / (weight.sum() * target.shape[1]).clamp_min(1)
    b = target.shape[0]
    w = (torch.ones(b, (target.shape[2] // norm_pix) * (target.shape[3] // norm_pix), device=target.device)
         if weight is None else F.avg_pool2d(weight.float(), norm_pix).flatten(1))
    return masked_patch_mse(patchify(pred, norm_pix), target, w, norm_pix, norm_pix=True)


@torch.no_grad()
def unnormalize_patches(pred: torch.Tensor, target: torch.Tensor, norm_pix: int) -> torch.Tensor:
    """For pictures only: a ``norm_pix`` prediction ``[B, C, H, W]`` mapped back to the target's units with
    each patch's own mean and std **of the target** (what the loss removed; the model never sees them)."""
    if not norm_pix:
        return pred
    t = patchify(target.float(), norm_pix)
    mean, std = t.mean(-1, keepdim=True), (t.var(-1, keepdim=True) + 1e-6).sqrt()
    grid = (target.shape[2] // norm_pix, target.shape[3] // norm_pix)
    return unpatchify(patchify(pred.float(), norm_pix) * std + mean, norm_pix, grid, target.shape[1])
