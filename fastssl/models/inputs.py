"""Input conversions a backbone can be built with (recorded in an exported backbone's ``input`` field).

- ``rgb`` (every method but colorize): the backbone itself, fed the pipeline's normalized RGB views.
- ``luminance`` (colorize): :class:`LuminanceInput`, a 1-channel ResNet that computes CIE L* from the
  normalized RGB views itself, so kNN / the linear probe / an exported copy see exactly what training saw.
- ``standardized`` (jigsaw, context with ``--tile-norm input``, their default): :class:`StandardizedInput`,
  each sample standardized per channel over its own pixels before the network (the tile methods' per-tile
  normalization, applied to whole images at evaluation; fastssl.methods._tiles says why).

The L* formula is the CIE one (sRGB D65, 2-degree observer: that of ``skimage.color.rgb2lab``), computed the
way ``fastssl.methods._color.rgb_to_lab`` computes its L channel (same operations in the same order, so the
two agree bit for bit; a test checks it). It lives here, below the methods, because ``load_backbone`` must
rebuild the wrapper from an exported file without importing a method.
"""

from __future__ import annotations

import torch
from torch import nn

from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["LuminanceInput", "StandardizedInput", "normalized_rgb_to_luminance", "RGB_TO_XYZ", "WHITE_D65", "INPUTS",
           "STANDARDIZE_EPS"]

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1 / skimage's xyz_from_rgb), and the D65 reference white.
RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
              (0.212671, 0.715160, 0.072169),
              (0.019334, 0.119193, 0.950227))
WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6 / 29  # CIE: f(t) = t^(1/3) above DELTA^3, linear below


def normalized_rgb_to_luminance(x: torch.Tensor) -> torch.Tensor:
    """Normalized RGB views ``[B, 3, H, W]`` (ImageNet mean/std) -> ``(L* - 50) / 50`` ``[B, 1, H, W]`` float32
    (float64 if given float64): pixels clamped to [0, 1], sRGB gamma undone, Y of XYZ (D65), L* = 116 f(Y) - 16.
    Raises ValueError unless axis 1 holds 3 channels."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected normalized RGB views [B, 3, H, W], got {tuple(x.shape)}")
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    rgb = (x * std + mean).clamp(0, 1)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(0) ** 2.4, rgb / 12.92)
    m = torch.tensor(RGB_TO_XYZ, dtype=x.dtype, device=x.device)
    white = torch.tensor(WHITE_D65, dtype=x.dtype, device=x.device).view(3, 1, 1)
    # All of XYZ and f(XYZ), as rgb_to_lab computes them, then Y: the same kernels on the same memory layout give
    # the same bits (a pow over a strided slice of Y alone takes another code path and differs in the last bit).
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin) / white
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    lum = 116 * f[:, 1] - 16
    return ((lum - 50) / 50).unsqueeze(1)


class LuminanceInput(nn.Module):
    """A 1-channel ResNet fed the L channel of normalized RGB views: ``[B, 3, H, W] -> [B, feature_dim]``
    (``forward``) or the feature map (``forward_features``). ``net`` is the ResNet (``in_chans=1``); its
    state-dict keys are ``net.*``."""

    input_kind = "luminance"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.feature_dim = net.feature_dim
        self.cifar_stem = net.cifar_stem

    @staticmethod
    def luminance(x: torch.Tensor) -> torch.Tensor:
        """Normalized RGB views -> ``(L - 50) / 50`` ``[B, 1, H, W]`` (float32)."""
        return normalized_rgb_to_luminance(x.float())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.luminance(x).to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.luminance(x).to(x.dtype))


STANDARDIZE_EPS = 1e-5  # fastssl.ops.sample_tiles' default: var + eps under the square root


class StandardizedInput(nn.Module):
    """The backbone ``net`` fed each sample standardized per channel over its own pixels:
    ``x -> net((x - mean_hw(x)) / sqrt(var_hw(x) + eps))`` for ``x`` float ``[B, C, H, W]`` -> ``[B, feature_dim]``
    (``forward``) or the feature map (``forward_features``). On a tile it is sample_tiles' ``normalize=True``
    (same formula, float32 statistics, biased variance, same eps); on a whole image it is the same
    standardization, so evaluation feeds the network the statistics training did. No parameters; statistics
    in float32 (float64 for float64 input)."""

    input_kind = "standardized"

    def __init__(self, net: nn.Module, eps: float = STANDARDIZE_EPS):
        super().__init__()
        self.net = net
        self.eps = eps
        self.feature_dim = net.feature_dim
        self.cifar_stem = getattr(net, "cifar_stem", False)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        xf = x.to(acc)
        mean = xf.mean((2, 3), keepdim=True)
        var = xf.var((2, 3), unbiased=False, keepdim=True)
        return ((xf - mean) / torch.sqrt(var + self.eps)).to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.standardize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


# ``input`` of an exported backbone -> the wrapper that rebuilds it around the network (None: the network).
INPUTS: dict[str, type[nn.Module] | None] = {"rgb": None, "luminance": LuminanceInput,
                                             "standardized": StandardizedInput}
