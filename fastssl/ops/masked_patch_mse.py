"""MAE's reconstruction loss on the masked patches, with the target read straight from the image.

``masked_patch_mse(pred, images, mask, patch_size, norm_pix=True)`` -> fp32 scalar (fp64 for fp64 pred):
sum_{b,l} mask[b,l] * mean_j (pred[b,l,j] - target[b,l,j])^2 / sum_{b,l} mask[b,l], where target[b, l]
is patch l of image b flattened in the original ``patchify`` order (row i, column q, channel c) and,
with ``norm_pix``, normalized per patch: (x - mean) / sqrt(var + 1e-6) with the unbiased variance
(MAE models_mae.py ``forward_loss`` with ``norm_pix_loss``). The original patchifies the whole image,
computes the error of all L patches, then multiplies by the mask; here only patches with a nonzero
mask weight are read (a quarter at ratio 0.75), the target is never stored, and the backward
recomputes it and writes the gradient of the masked patches' predictions (zeros elsewhere).

Args: ``pred`` [B, L, p*p*C] float (any float dtype; e.g. bf16 from an autocast decoder); ``images``
[B, C, H, W] float, any strides, L = (H/p)(W/p); ``mask`` [B, L] float or bool weights (1 = masked:
in the loss; any weight >= 0 is allowed, e.g. 2 counts a patch twice; negative weights are refused
on CPU); ``patch_size`` p dividing H and W. Gradient: pred only (the target is data; images and
mask get none). Nothing masked (sum of mask = 0) gives 0 with zero gradient (the original divides 0
by 0: NaN).

Numerics: targets, errors and sums in fp32 whatever the input dtypes (fp64 for fp64 pred); a patch's
mean and variance are computed on (x - x_first), so a constant patch gives an exactly zero target,
never NaN, also for 16-bit inputs and under autocast. Error bound enforced by the tests: the 2x rule
of tests/helpers against the float64 reference. Back ends: CUDA -> Triton
``fastssl.kernels.masked_patch_mse`` (fwd and bwd); CPU -> gather of the masked patches in torch;
``FASTSSL_BACKEND=ref`` -> :func:`masked_patch_mse_ref`. Triton launch: images through their strides
(channels_last: one contiguous run per patch row), pred and mask contiguous (a strided view is
copied); B*L or one sample's span at or over 2**31 elements takes the torch path.
"""

from __future__ import annotations

import torch

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None

from fastssl.ops._backend import choose_backend
from fastssl.ops._checks import (
    INT32_MAX,
    check_patch,
    check_same,
    check_tensor,
    device_arch,
    is_channels_last,
    launch,
    patch_view,
)

EPS = 1e-6
MAX_TRITON_NPIX = 8192  # whole patches in registers
BACKENDS = {"masked_patch_mse": {"cpu": "native: gather masked patches, fp32",
                                 "cuda": "triton: fused target + error fwd/bwd"}}


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The original MAE ``patchify``: [B, C, H, W] -> [B, L, p*p*C], pixel order (i, q, c)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: [B, L, p*p*C] -> [B, C, gh*p, gw*p]."""
    b = x.shape[0]
    p, (gh, gw) = patch_size, grid
    x = x.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, gh * p, gw * p)


def norm_pix_target(target: torch.Tensor) -> torch.Tensor:
    """Per-patch normalization of the last dim as the original: (x - mean) / sqrt(var + 1e-6), unbiased."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + EPS) ** 0.5


def masked_patch_mse_ref(pred, images, mask, patch_size, norm_pix=True):
    """The original ``forward_loss``: patchify everything, (optionally) normalize, error of all L
    patches, weighted by the mask, in the inputs' dtype."""
    target = patchify(images, patch_size)
    if norm_pix:
        target = norm_pix_target(target)
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def _compute_dtype(pred):
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _native_rows(pred, images, w, patch_size, norm_pix):
    """(row indices with w != 0, pred - target of those rows) in the compute dtype."""
    cd = _compute_dtype(pred)
    b, n, npix = pred.shape
    idx = w.nonzero().squeeze(1)
    v = patch_view(images, patch_size)  # [B, gh, gw, C, p, p]
    gw = v.shape[2]
    bi, li = idx // n, idx % n
    t = v[bi, li // gw, li % gw].permute(0, 2, 3, 1).reshape(-1, npix).to(cd)
    if norm_pix:
        t = t - t[:, :1]
        t = t - t.mean(dim=1, keepdim=True)
        var = (t * t).sum(dim=1, keepdim=True) / (npix - 1)
        t = t / (var + EPS).sqrt()
    return idx, pred.reshape(b * n, npix)[idx].to(cd) - t


def _native(pred, images, w, patch_size, norm_pix):
    idx, diff = _native_rows(pred, images, w, patch_size, norm_pix)
    err = (diff * diff).mean(dim=1)
    cd = diff.dtype
    return (err * w[idx].to(cd)).sum() / w.to(cd).sum().clamp_min(torch.finfo(cd).tiny)


def _native_backward(grad, pred, images, w, patch_size, norm_pix):
    idx, diff = _native_rows(pred, images, w, patch_size, norm_pix)
    cd = diff.dtype
    coef = grad.to(cd) / w.to(cd).sum().clamp_min(torch.finfo(cd).tiny) * (2.0 / pred.shape[-1])
    dpred = torch.zeros_like(pred)
    dpred.view(-1, pred.shape[-1])[idx] = (diff * (w[idx].to(cd) * coef)[:, None]).to(pred.dtype)
    return dpred


def triton_config(npix: int, arch: tuple[int, int] | None) -> dict:
    """Tiles for patches of ``npix`` values on compute capability ``arch`` (None: the interpreter)."""
    block_p = triton.next_power_of_2(npix)
    if arch is None:
        return dict(BLOCK_M=4, BLOCK_P=block_p, num_warps=1)
    # whole patches per program, at most 4096 values live (no spills on sm80/86/89/90:
    # tests/ops/test_mae_kernels_aot.py)
    return dict(BLOCK_M=max(1, min(16, 4096 // block_p)), BLOCK_P=block_p, num_warps=4)


def _kernel_args(pred, images, patch_size: int, norm_pix: bool, arch) -> tuple[tuple, dict]:
    b, n, npix = pred.shape
    c = images.shape[1]
    cfg = triton_config(npix, arch)
    args = (b * n, n, images.shape[-1] // patch_size, *images.stride())
    return args, dict(P=patch_size, C=c, NPIX=npix, NORM_PIX=norm_pix, CHANNELS_LAST=is_channels_last(images), **cfg)


def fwd_plan(pred, images, w, err, patch_size: int, norm_pix: bool, *, arch) -> list:
    """The forward launch: pred [B, L, NPIX], w [B*L], err fp32 [B*L] contiguous; images any strides."""
    from fastssl.kernels.masked_patch_mse import _masked_patch_mse_fwd_kernel

    args, kw = _kernel_args(pred, images, patch_size, norm_pix, arch)
    grid = (triton.cdiv(args[0], kw["BLOCK_M"]),)
    return [(_masked_patch_mse_fwd_kernel, grid, (pred, images, w, err, *args), kw)]


def bwd_plan(pred, images, w, coef, dpred, patch_size: int, norm_pix: bool, *, arch) -> list:
    """The backward launch: as :func:`fwd_plan`, coef fp32 [1], dpred like pred (contiguous)."""
    from fastssl.kernels.masked_patch_mse import _masked_patch_mse_bwd_kernel

    args, kw = _kernel_args(pred, images, patch_size, norm_pix, arch)
    grid = (triton.cdiv(args[0], kw["BLOCK_M"]),)
    return [(_masked_patch_mse_bwd_kernel, grid, (pred, images, w, coef, dpred, *args), kw)]


def fits_int32(pred: torch.Tensor, images: torch.Tensor) -> bool:
    """The kernels' 32-bit offsets hold: the rows B*L and one sample's span."""
    span = sum((n - 1) * s for n, s in zip(images.shape[1:], images.stride()[1:]))
    return max(pred.shape[0] * pred.shape[1], span) <= INT32_MAX


def _triton(pred, images, w, patch_size, norm_pix):
    err = torch.empty(w.numel(), dtype=torch.float32, device=pred.device)
    launch(fwd_plan(pred.contiguous(), images, w.contiguous(), err, patch_size, norm_pix, arch=device_arch(pred)),
           pred)
    wf = w.float()
    return (err * wf).sum() / wf.sum().clamp_min(torch.finfo(torch.float32).tiny)


def _triton_backward(grad, pred, images, w, patch_size, norm_pix):
    coef = (grad.float() / w.float().sum().clamp_min(torch.finfo(torch.float32).tiny)).reshape(1)
    dpred = torch.empty_like(pred, memory_format=torch.contiguous_format)
    launch(bwd_plan(pred.contiguous(), images, w.contiguous(), coef, dpred, patch_size, norm_pix,
                    arch=device_arch(pred)), pred)
    return dpred


def _use_triton(pred, images):
    backend = choose_backend(pred, ("ref", "triton", "native"))
    return backend, (backend == "triton" and pred.dtype != torch.float64 and pred.shape[-1] <= MAX_TRITON_NPIX
                     and fits_int32(pred, images))


@torch.library.custom_op("fastssl::masked_patch_mse", mutates_args=())
def _masked_patch_mse_op(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
                         norm_pix: bool) -> torch.Tensor:
    backend, tri = _use_triton(pred, images)
    w = mask.reshape(-1)
    if tri:
        return _triton(pred, images, w, patch_size, norm_pix)
    if backend == "ref":
        cd = _compute_dtype(pred)
        return masked_patch_mse_ref(pred.to(cd), images.to(cd), mask.to(cd), patch_size, norm_pix)
    return _native(pred, images, w, patch_size, norm_pix)


@_masked_patch_mse_op.register_fake
def _(pred, images, mask, patch_size, norm_pix):
    return pred.new_empty((), dtype=_compute_dtype(pred))


@torch.library.custom_op("fastssl::masked_patch_mse_backward", mutates_args=())
def _masked_patch_mse_backward_op(grad: torch.Tensor, pred: torch.Tensor, images: torch.Tensor,
                                  mask: torch.Tensor, patch_size: int, norm_pix: bool) -> torch.Tensor:
    _, tri = _use_triton(pred, images)
    fn = _triton_backward if tri else _native_backward
    return fn(grad, pred, images, mask.reshape(-1), patch_size, norm_pix)


@_masked_patch_mse_backward_op.register_fake
def _(grad, pred, images, mask, patch_size, norm_pix):
    return torch.empty_like(pred)


def _setup_context(ctx, inputs, output):
    pred, images, mask, patch_size, norm_pix = inputs
    ctx.save_for_backward(pred, images, mask)
    ctx.patch_size, ctx.norm_pix = patch_size, norm_pix


def _backward(ctx, grad):
    pred, images, mask = ctx.saved_tensors
    dpred = torch.ops.fastssl.masked_patch_mse_backward(grad, pred, images, mask, ctx.patch_size, ctx.norm_pix)
    return dpred, None, None, None, None


torch.library.register_autograd("fastssl::masked_patch_mse", _backward, setup_context=_setup_context)


def masked_patch_mse(pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, patch_size: int,
                     norm_pix: bool = True) -> torch.Tensor:
    """MSE over the masked patches against the image's (normalized) pixels (see the module docstring).

    Raises ValueError for: patch_size not dividing H or W, pred not [B, L, p*p*C] for the image's
    grid, mask not [B, L] or (CPU) negative, non-float pred/images, mixed devices, norm_pix with a 1-pixel patch.
    """
    check_tensor("pred", pred, dim=3)
    check_tensor("images", images, dim=4)
    gh, gw = check_patch(images, patch_size)
    b, c = images.shape[:2]
    npix = patch_size * patch_size * c
    if tuple(pred.shape) != (b, gh * gw, npix):
        raise ValueError(f"pred must be [{b}, {gh * gw}, {npix}] (batch, patches, p*p*C) for images "
                         f"{tuple(images.shape)} and patch {patch_size}, got {tuple(pred.shape)}")
    check_same("pred", pred, "images", images, dtype=False)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, gh * gw):
        raise ValueError(f"mask must be a [{b}, {gh * gw}] tensor, got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    check_same("pred", pred, "mask", mask, dtype=False)
    if mask.dtype == torch.bool or not mask.is_floating_point():
        mask = mask.float()
    if mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool((mask < 0).any()):
        raise ValueError("mask holds negative weights (1 = masked and in the loss, 0 = visible)")
    if norm_pix and npix < 2:
        raise ValueError("norm_pix needs at least 2 values per patch (the unbiased variance)")
    return torch.ops.fastssl.masked_patch_mse(pred, images, mask.contiguous(), patch_size, bool(norm_pix))
