"""MAE's patch embedding of the kept patches only, read straight from the image.

``masked_patch_embed(images, weight, bias, pos_embed, patch_size, ids_keep)`` -> [B, L_keep, D]:
token (b, k) = Conv2d(kernel = stride = patch)(images)[b, :, patch ids_keep[b, k]] + pos_embed[ids_keep[b, k]],
i.e. ``weight.reshape(D, -1) @ pixels + bias + pos``, with the same weight layout as
``nn.Conv2d(C, D, p, stride=p)`` (so a timm/MAE ``patch_embed.proj`` checkpoint loads unchanged).
The original code embeds all L patches, adds the position embedding to all of them, then gathers the
kept ones (``PatchEmbed`` + ``random_masking``); at mask ratio 0.75 this reads and multiplies a
quarter of that and never writes a patchified copy of the image.

Args: ``images`` [B, C, H, W] float (NCHW or channels_last / any strides); ``weight`` [D, C, p, p];
``bias`` [D] or None; ``pos_embed`` [L, D] or [1, L, D] (patch tokens only: pass ``pos[:, 1:]`` when
index 0 is the cls token) or None; ``patch_size`` p dividing H and W; ``ids_keep`` int64 [B, L_keep]
with values in [0, L) (checked on CPU; CUDA ids are not read on the host: no sync). images, weight,
bias, pos_embed share a dtype and device (under ``torch.autocast`` all four are cast to the autocast
dtype, as Conv2d is).

Gradients: weight, bias, pos_embed and images (each only when it requires grad). The backward is
torch ops on any device: the kept patches are gathered again (L_keep/L of the image) for one matmul
into dweight; dbias is a sum; dpos an ``index_add`` over positions (atomic, so not bitwise
deterministic on CUDA); dimages the kept patches' ``grad @ weight`` scattered into zeros.

Numerics: fp32 accumulation on the Triton path (tf32 dots for fp32 inputs when
``torch.backends.cudnn.allow_tf32``, as Conv2d; IEEE otherwise); the CPU path is a gather + one
``addmm`` in the input dtype. Error bound the tests enforce: the 2x rule of tests/helpers against the
float64 reference. Back ends: CUDA -> Triton ``fastssl.kernels.masked_patch_embed``; CPU -> gather +
addmm; ``FASTSSL_BACKEND=ref`` -> :func:`masked_patch_embed_ref` (Conv2d on every patch, then gather).
Triton launch: the image is read through its strides (channels_last images, as the trainer feeds
them, in (i, j, c) pixel order with 16-byte loads; the weight is then passed permuted to [D, p, p, C],
one D x C*p*p copy per call); ids_keep, bias and pos_embed are passed contiguous (a strided view is
copied). Shapes whose offsets would not fit the kernel's 32-bit in-sample offsets (one sample over
2**31 elements, B*L_keep >= 2**31) take the gather + addmm path on CUDA too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None

from fastssl.ops._backend import choose_backend
from fastssl.ops._checks import (
    INT32_MAX,
    autocast_dtype,
    check_id_range,
    check_ids,
    check_patch,
    check_same,
    check_tensor,
    device_arch,
    is_channels_last,
    launch,
    patch_view,
)

BACKENDS = {"masked_patch_embed": {"cpu": "native: gather kept patches + addmm",
                                   "cuda": "triton: implicit-GEMM over the kept patches"}}


def masked_patch_embed_ref(images, weight, bias, pos_embed, patch_size, ids_keep):
    """The original path (MAE models_mae.py forward_encoder): Conv2d on every patch, flatten, add the
    position embedding, gather the kept tokens. Same arguments and result as :func:`masked_patch_embed`."""
    x = F.conv2d(images, weight, bias, stride=patch_size).flatten(2).transpose(1, 2)  # [B, L, D]
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, -1, x.shape[-1])
    return torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))


def gather_patches(images: torch.Tensor, patch_size: int, ids_keep: torch.Tensor) -> torch.Tensor:
    """Pixels of the kept patches [B, K, C*p*p] in Conv2d weight order (c, i, j); reads only those."""
    v = patch_view(images, patch_size)  # [B, gh, gw, C, p, p]
    gw = v.shape[2]
    bidx = torch.arange(images.shape[0], device=images.device)[:, None]
    return v[bidx, ids_keep // gw, ids_keep % gw].flatten(2)


def _native(images, weight, bias, pos, patch_size, ids_keep):
    b, k = ids_keep.shape
    d = weight.shape[0]
    a = gather_patches(images, patch_size, ids_keep).reshape(b * k, -1)
    wf = weight.reshape(d, -1)
    out = torch.addmm(bias, a, wf.t()) if bias is not None else a @ wf.t()
    out = out.view(b, k, d)
    if pos is not None:
        out += pos[ids_keep]
    return out


def triton_config(arch: tuple[int, int] | None) -> dict:
    """Tiles for compute capability ``arch`` (None: the interpreter: small tiles so tiny shapes span
    several programs; BLOCK_R 32 so that R = 16 and 48 take the masked tail, R = 192 the even path)."""
    if arch is None:
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_R=32, num_warps=1, UPCAST=True)
    # 64 x 64 tokens x channels, 32 pixels per step, 4 warps: no spills and under 64 KB of shared memory
    # on sm80/86/89/90 in every dtype and layout (tests/ops/test_mae_kernels_aot.py)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_R=32, num_warps=4, UPCAST=False)


def fits_int32(images: torch.Tensor, weight: torch.Tensor, m: int, num_patches: int) -> bool:
    """The kernel's 32-bit offsets hold: one sample's span, the tokens, the weight and pos_embed."""
    span = sum((n - 1) * s for n, s in zip(images.shape[1:], images.stride()[1:]))
    d = weight.shape[0]
    return max(span, m, weight.numel(), num_patches * d) <= INT32_MAX


def embed_plan(images, ids, wf, bias, pos, out, patch_size: int, *, channels_last: bool, tf32: bool, arch) -> list:
    """The launch [(kernel, grid, args, kwargs)]: images [B, C, H, W] (any strides), ids int64 [B, K] and
    wf [D, R] (pixel order (i, j, c) when channels_last, else (c, i, j)), bias [D] / pos [L, D] / None,
    out [B, K, D]; all but images contiguous."""
    from fastssl.kernels.masked_patch_embed import _masked_patch_embed_fwd_kernel

    b, k = ids.shape
    m, d = b * k, wf.shape[0]
    cfg = triton_config(arch)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(d, cfg["BLOCK_N"]))
    args = (images, ids, wf, bias if bias is not None else wf, pos if pos is not None else wf, out, m, k, d,
            images.shape[-1] // patch_size, *images.stride())
    kw = dict(P=patch_size, C=images.shape[1], CHANNELS_LAST=channels_last, HAS_BIAS=bias is not None,
              HAS_POS=pos is not None, DOT_PRECISION="tf32" if tf32 else "ieee", **cfg)
    return [(_masked_patch_embed_fwd_kernel, grid, args, kw)]


def _triton(images, weight, bias, pos, patch_size, ids_keep):
    b, k = ids_keep.shape
    d = weight.shape[0]
    out = torch.empty(b, k, d, dtype=images.dtype, device=images.device)
    channels_last = is_channels_last(images)
    # the weight in the kernel's pixel order (channels_last: (i, j, c), one D x R copy) and every
    # pointer but the image contiguous (read as flat arrays)
    wf = (weight.permute(0, 2, 3, 1) if channels_last else weight).reshape(d, -1).contiguous()
    tf32 = images.dtype == torch.float32 and images.is_cuda and torch.backends.cudnn.allow_tf32
    plan = embed_plan(images, ids_keep.contiguous(), wf, bias.contiguous() if bias is not None else None,
                      pos.contiguous() if pos is not None else None, out, patch_size, channels_last=channels_last,
                      tf32=tf32, arch=device_arch(images))
    launch(plan, images)
    return out


@torch.library.custom_op("fastssl::masked_patch_embed", mutates_args=())
def _masked_patch_embed_op(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           pos_embed: torch.Tensor | None, patch_size: int, ids_keep: torch.Tensor) -> torch.Tensor:
    backend = choose_backend(images, ("ref", "triton", "native"))
    if backend == "triton" and images.dtype != torch.float64 and fits_int32(
            images, weight, ids_keep.numel(), pos_embed.shape[0] if pos_embed is not None else 0):
        return _triton(images, weight, bias, pos_embed, patch_size, ids_keep)
    if backend == "ref":
        return masked_patch_embed_ref(images, weight, bias, pos_embed, patch_size, ids_keep).contiguous()
    return _native(images, weight, bias, pos_embed, patch_size, ids_keep)


@_masked_patch_embed_op.register_fake
def _(images, weight, bias, pos_embed, patch_size, ids_keep):
    return images.new_empty(ids_keep.shape[0], ids_keep.shape[1], weight.shape[0])


def _setup_context(ctx, inputs, output):
    images, weight, bias, pos_embed, patch_size, ids_keep = inputs
    ctx.save_for_backward(images, weight, ids_keep)
    ctx.patch_size = patch_size
    ctx.has_bias, ctx.has_pos = bias is not None, pos_embed is not None
    ctx.num_patches = pos_embed.shape[0] if pos_embed is not None else 0


def _backward(ctx, grad):
    images, weight, ids_keep = ctx.saved_tensors
    p = ctx.patch_size
    b, k = ids_keep.shape
    d = weight.shape[0]
    g2 = grad.reshape(b * k, d)
    need_img, need_w, need_b, need_pos = (ctx.needs_input_grad[i] for i in range(4))
    d_img = d_w = d_b = d_pos = None
    if need_w:
        a = gather_patches(images, p, ids_keep).reshape(b * k, -1)
        d_w = (g2.t() @ a).reshape(weight.shape)
    if need_b and ctx.has_bias:
        d_b = g2.sum(0)
    if need_pos and ctx.has_pos:
        d_pos = grad.new_zeros(ctx.num_patches, d).index_add_(0, ids_keep.reshape(-1), g2)
    if need_img:
        d_patches = (g2 @ weight.reshape(d, -1)).reshape(b, k, *weight.shape[1:])
        d_img = torch.zeros_like(images)
        v = patch_view(d_img, p)
        gw = v.shape[2]
        bidx = torch.arange(b, device=images.device)[:, None]
        v[bidx, ids_keep // gw, ids_keep % gw] = d_patches
    return d_img, d_w, d_b, d_pos, None, None


torch.library.register_autograd("fastssl::masked_patch_embed", _backward, setup_context=_setup_context)


def masked_patch_embed(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       pos_embed: torch.Tensor | None, patch_size: int, ids_keep: torch.Tensor) -> torch.Tensor:
    """Embed only the kept patches: [B, C, H, W] -> [B, L_keep, D] (see the module docstring).

    Raises ValueError for: non-4-D or non-float images, patch_size not dividing H or W, a weight
    that is not [D, C, p, p], a bias not [D], a pos_embed not [L, D] / [1, L, D], ids_keep not int64
    [B, L_keep] or (CPU) holding an index outside [0, L), mixed devices or dtypes (outside autocast).
    """
    check_tensor("images", images, dim=4)
    gh, gw = check_patch(images, patch_size)
    check_tensor("weight", weight, dim=4)
    c = images.shape[1]
    if tuple(weight.shape[1:]) != (c, patch_size, patch_size):
        raise ValueError(f"weight must be [D, {c}, {patch_size}, {patch_size}] (Conv2d layout), "
                         f"got {tuple(weight.shape)}")
    d = weight.shape[0]
    cast = autocast_dtype(images.device)
    if cast is not None:
        images, weight = images.to(cast), weight.to(cast)
    check_same("images", images, "weight", weight)
    if bias is not None:
        check_tensor("bias", bias, dim=1)
        if bias.shape[0] != d:
            raise ValueError(f"bias must be [{d}], got {tuple(bias.shape)}")
        bias = bias.to(cast) if cast is not None else bias
        check_same("images", images, "bias", bias)
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed)
        if pos_embed.dim() == 3 and pos_embed.shape[0] == 1:
            pos_embed = pos_embed[0]
        if tuple(pos_embed.shape) != (gh * gw, d):
            raise ValueError(f"pos_embed must be [{gh * gw}, {d}] or [1, {gh * gw}, {d}] (one row per patch, "
                             f"no cls row), got {tuple(pos_embed.shape)}")
        pos_embed = pos_embed.to(cast) if cast is not None else pos_embed
        check_same("images", images, "pos_embed", pos_embed)
    check_ids("ids_keep", ids_keep, images, images.shape[0])
    if ids_keep.shape[1] > gh * gw:
        raise ValueError(f"ids_keep keeps {ids_keep.shape[1]} patches of {gh * gw}")
    check_id_range("ids_keep", ids_keep, gh * gw)
    return torch.ops.fastssl.masked_patch_embed(images, weight, bias, pos_embed, patch_size, ids_keep)
