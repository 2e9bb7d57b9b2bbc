"""Colour helpers of the colorization task (Zhang et al. 2016, "Colorful Image Colorization"), on the device.

- ``rgb_to_lab`` / ``lab_to_rgb``: sRGB (D65, 2-degree observer) <-> CIE L*a*b*, the CIE formulas
  (those of skimage.color.rgb2lab/lab2rgb), in float32 or float64, channel axis -3.
- ``ab_gamut_bins(grid)``: the quantized ab output space: grid points (multiples of ``grid``) whose
  ``grid x grid`` cell holds the ab coordinates of at least one sRGB colour (any L), computed from the
  gamut, not read from a file (see the function for how this relates to the paper's 313).
- ``soft_encode``: each ab value as weights over its ``k=5`` nearest bins, Gaussian ``sigma=5`` (Sec. 2.1).
- ``rebalance_weights``: class-rebalancing weights from bin counts (Sec. 2.2, Eq. 3-4).
- ``annealed_mean``: the annealed-mean decode of a bin distribution, temperature ``T=0.38`` (Sec. 2.3).

Units: RGB in [0, 1]; L in [0, 100]; a, b roughly in [-110, 110].
"""

from __future__ import annotations

import functools

import torch

# sRGB (linear) -> XYZ (D65) and the D65 white: one definition, shared with the backbones' luminance input.
from fastssl.models.inputs import RGB_TO_XYZ, WHITE_D65

__all__ = ["rgb_to_lab", "lab_to_rgb", "ab_gamut_bins", "soft_encode", "soft_encode_ref", "rebalance_weights",
           "annealed_mean", "WHITE_D65", "RGB_TO_XYZ"]

_DELTA = 6 / 29  # CIE: f(t) = t^(1/3) above DELTA^3, linear below


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _mix(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 matrix over the channel axis -3 of ``x``."""
    return torch.einsum("ij,...jhw->...ihw", m, x)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``[..., 3, H, W]`` -> L*a*b* ``[..., 3, H, W]`` (float32, or float64 if given).

    sRGB gamma -> linear -> XYZ (D65) -> normalized by the white -> CIE f -> L = 116 f(Y) - 16,
    a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)). Raises ValueError if axis -3 is not 3 channels.
    """
    if rgb.dim() < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab expects [..., 3, H, W], got {tuple(rgb.shape)}")
    rgb = _float(rgb)
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).clamp_min(0) ** 2.4, rgb / 12.92)
    m = torch.tensor(RGB_TO_XYZ, dtype=rgb.dtype, device=rgb.device)
    white = torch.tensor(WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)
    xyz = _mix(lin, m) / white
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """L*a*b* ``[..., 3, H, W]`` -> sRGB ``[..., 3, H, W]``, the exact inverse of ``rgb_to_lab`` inside
    the gamut; ``clamp=True`` clips out-of-gamut results to [0, 1] (as skimage does)."""
    if lab.dim() < 3 or lab.shape[-3] != 3:
        raise ValueError(f"lab_to_rgb expects [..., 3, H, W], got {tuple(lab.shape)}")
    lab = _float(lab)
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    white = torch.tensor(WHITE_D65, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29)) * white
    m_inv = torch.linalg.inv(torch.tensor(RGB_TO_XYZ, dtype=torch.float64)).to(lab.dtype).to(lab.device)
    lin = _mix(xyz, m_inv)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1) if clamp else rgb


def ab_gamut_bins(grid: int = 10, steps: int = 512, device=None) -> torch.Tensor:
    """The in-gamut quantized ab values ``[Q, 2]`` (float32, sorted by a then b): every point of the
    ``grid`` lattice whose cell ``[a - grid/2, a + grid/2) x [b - grid/2, b + grid/2)`` contains the ab
    of some sRGB colour, at any lightness (Zhang et al. 2016, Sec. 2.1: "grid size 10 ... keep the
    values which are in-gamut").

    The gamut's ab footprint is that of the RGB cube's surface (the Lab solid is the image of the cube,
    and each vertical line through it meets its boundary), so the six faces are sampled on a
    ``steps x steps`` grid each, converted in float64, and the occupied cells kept.

    Note: with grid 10 this rule gives 262 bins; the paper's released ``pts_in_hull.npy`` holds 313
    points whose rule is not documented (it spans the same a range -90..100 and b range -110..90, so it
    is a more generous footprint). docs/methods/colorize.md lists the rules tried.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    # a copy: the cached tensor must not become a module's buffer (load_state_dict would write into the cache)
    return _gamut_bins(grid, steps).to(device, copy=True)


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: int, steps: int) -> torch.Tensor:
    t = torch.linspace(0, 1, steps, dtype=torch.float64)
    u, v = torch.meshgrid(t, t, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    faces = []
    for axis in range(3):
        for value in (0.0, 1.0):
            cols = [u, v]
            cols.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(cols, 0))
    rgb = torch.cat(faces, 1)[:, :, None]  # [3, N, 1]
    ab = rgb_to_lab(rgb)[1:, :, 0].T  # [N, 2]
    cells = torch.floor(ab / grid + 0.5).long()
    lo = cells.min(0).values
    span = int(cells[:, 1].max() - lo[1]) + 1
    keys = torch.unique((cells[:, 0] - lo[0]) * span + (cells[:, 1] - lo[1]))  # sorted: by a, then b
    cells = torch.stack([keys // span + lo[0], keys % span + lo[1]], 1)
    return (cells * grid).float()


def _check_ab(ab: torch.Tensor, bins: torch.Tensor) -> None:
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"ab must be [B, 2, H, W], got {tuple(ab.shape)}")
    if bins.dim() != 2 or bins.shape[1] != 2 or bins.shape[0] < 1:
        raise ValueError(f"bins must be [Q, 2], got {tuple(bins.shape)}")


def soft_encode(ab: torch.Tensor, bins: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Soft-encode ab values ``[B, 2, H, W]`` over ``bins [Q, 2]``: ``[B, Q, H, W]`` (float32) holding, at
    each pixel, weights ``exp(-d^2 / (2 sigma^2))`` on its ``k`` nearest bins (Euclidean distance d in
    ab units), normalized to sum to 1, and 0 elsewhere (Zhang et al. 2016, Sec. 2.1: 5 neighbours,
    sigma 5). Ties in distance go to the lower bin index. Raises ValueError for bad shapes or k."""
    _check_ab(ab, bins)
    q = bins.shape[0]
    if not 1 <= k <= q:
        raise ValueError(f"k must be in [1, {q}], got {k}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    b, _, h, w = ab.shape
    pts = ab.float().permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(pts, bins.float().to(pts.device), compute_mode="donot_use_mm_for_euclid_dist") ** 2  # [N, Q]
    near_d2, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    # exp(-d^2/2s^2) normalized, shifted by the nearest bin's d^2 (the same weights): the nearest bin's logit is
    # exactly 0 and the scale finite, so a tiny sigma gives the one-hot limit on the nearest bin, never 0/0 = NaN
    # (unshifted, every logit of a pixel between bins is -inf once d^2 / 2s^2 overflows float32).
    two_s2, big = 2.0 * sigma * sigma, torch.finfo(torch.float32).max
    scale = min(1.0 / two_s2, big) if two_s2 > 0 else big
    wts = torch.softmax(-(near_d2 - near_d2[:, :1]) * scale, dim=1)
    out = torch.zeros(pts.shape[0], q, device=pts.device, dtype=torch.float32)
    out.scatter_(1, idx, wts)
    return out.view(b, h, w, q).permute(0, 3, 1, 2)


def soft_encode_ref(ab: torch.Tensor, bins: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Plain per-pixel reference of ``soft_encode`` (float64, a Python loop: tiny inputs only)."""
    _check_ab(ab, bins)
    b, _, h, w = ab.shape
    c = bins.double().cpu()
    out = torch.zeros(b, c.shape[0], h, w, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                d2 = ((c - ab[i, :, y, x].double().cpu()) ** 2).sum(1)
                order = sorted(range(len(d2)), key=lambda j: (float(d2[j]), j))[:k]
                wts = torch.exp(-d2[order] / (2 * sigma ** 2))
                out[i, order, y, x] = wts / wts.sum()
    return out


def rebalance_weights(counts: torch.Tensor, bins: torch.Tensor, sigma: float = 5.0, lam: float = 0.5) -> torch.Tensor:
    """Class-rebalancing weights ``[Q]`` (float64) from bin counts ``[Q]`` (Zhang et al. 2016, Eq. 4):
    ``p`` = counts / total, smoothed with a Gaussian kernel of ``sigma`` ab units over the bin
    centres (``p~``, renormalized), ``w ~ ((1 - lam) p~ + lam / Q)^-1`` scaled so that
    ``sum_q p~_q w_q = 1`` (expectation 1 under the smoothed distribution).

    Bounded: since ``p~_q <= 1``, ``sum_q p~_q w_q`` before scaling is at least 1, so every weight is at most
    ``Q / lam`` (finite in float32 for any ``lam >= 1e-30``). ``lam = 0`` (pure inverse frequency) is refused: a bin
    whose smoothed mass is 0 (it underflows in float64 for bins ~200 ab units from every counted colour) would
    weigh 1/0, and near-empty bins ~1e158, inf once cast to float32 (richzhang/colorization issue 69). Raises
    ValueError for negative or all-zero counts or lam outside (0, 1]."""
    counts = counts.double().cpu()
    if counts.dim() != 1 or counts.shape[0] != bins.shape[0]:
        raise ValueError(f"counts must be [{bins.shape[0]}], got {tuple(counts.shape)}")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("counts must be >= 0 with a positive total")
    if not 0 < lam <= 1:
        raise ValueError(f"lam must be in (0, 1] (0 gives the bins the counts never reach an infinite weight), "
                         f"got {lam}")
    p = counts / counts.sum()
    c = bins.double().cpu()
    kernel = torch.exp(-torch.cdist(c, c) ** 2 / (2 * sigma ** 2))
    p_smooth = kernel @ p
    p_smooth = p_smooth / p_smooth.sum()
    w = 1.0 / ((1 - lam) * p_smooth + lam / c.shape[0])
    return w / (p_smooth * w).sum()


def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """Annealed-mean decode (Zhang et al. 2016, Eq. 5): logits ``[B, Q, H, W]`` -> ab ``[B, 2, H, W]``
    (float32): ``f_T(z) = exp(log z / T) / sum exp(log z / T)`` of ``z = softmax(logits)``, which is
    ``softmax(logits / T)``, then the mean of the bin centres under it. T=1: the mean; T->0: the mode."""
    if logits.dim() != 4 or logits.shape[1] != bins.shape[0]:
        raise ValueError(f"logits must be [B, {bins.shape[0]}, H, W], got {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    prob = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", prob, bins.float().to(prob.device))
