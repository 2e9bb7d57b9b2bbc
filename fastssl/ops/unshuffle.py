"""MAE's unshuffle: visible tokens back to their positions, the mask token elsewhere, plus the
decoder position embedding, in one pass.

``unshuffle(x_visible, mask_token, ids_restore, pos_embed=None)`` -> [B, L, D]:
out[b, l] = (x_visible[b, r] if r < K else mask_token) + pos_embed[l], r = ids_restore[b, l], K =
x_visible.shape[1]. The original code (MAE models_mae.py forward_decoder) repeats the mask token into
a [B, L - K, D] tensor, concatenates it to the visible tokens, gathers with ids_restore, then adds the
position embedding in another pass; here nothing but the output is written.

Args: ``x_visible`` [B, K, D] float; ``mask_token`` [D], [1, D] or [1, 1, D]; ``ids_restore`` int64
[B, L] from :func:`fastssl.ops.random_masking` (each sample's values a permutation of [0, L), K of
them < K; on CPU every value is checked to be in [0, L); CUDA ids are not read on
the host: no sync); ``pos_embed`` [L, D] or [1, L, D] (patch rows only) or None.
One dtype and device for the float inputs (under ``torch.autocast`` mask_token and pos_embed are cast
to x_visible's dtype). Gradients: x_visible (the kept rows of dout, scattered back: unique targets),
mask_token (dout summed over the masked positions of every sample, fp32 accumulation, fixed order:
deterministic), pos_embed (dout summed over the batch).

Back ends: CUDA -> Triton ``fastssl.kernels.unshuffle`` (fwd and bwd); CPU -> gather + where in
torch; ``FASTSSL_BACKEND=ref`` -> :func:`unshuffle_ref`. Values are copied, so every back end is
exact (gradients: sums in fp32). Triton launch: x_visible is read through its batch and token strides
(the decoder's ``x[:, 1:]`` is not copied; a view whose columns are strided is), the other tensors are
passed contiguous; a sample whose offsets pass 2**31 elements takes the torch path.
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
    autocast_dtype,
    check_id_range,
    check_ids,
    check_same,
    check_tensor,
    device_arch,
    launch,
)

BACKENDS = {"unshuffle": {"cpu": "native: gather + where", "cuda": "triton: one-pass fwd / scatter bwd"}}


def unshuffle_ref(x_visible, mask_token, ids_restore, pos_embed=None):
    """The original (MAE forward_decoder): repeat the mask token, concatenate, gather, add pos."""
    b, k, d = x_visible.shape
    n = ids_restore.shape[1]
    mask_tokens = mask_token.reshape(1, 1, d).expand(b, n - k, d)
    x = torch.cat([x_visible, mask_tokens], dim=1)
    x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, d))
    if pos_embed is not None:
        x = x + pos_embed.reshape(1, n, d)
    return x


def _native(x, mt, ids, pos):
    b, k, d = x.shape
    kept = (ids < k)[..., None]
    out = torch.gather(x, 1, ids.clamp(max=k - 1)[..., None].expand(-1, -1, d))
    out = torch.where(kept, out, mt)
    if pos is not None:
        out += pos
    return out


def _native_backward(grad, ids, k, need_x, need_mt, need_pos):
    b, n, d = grad.shape
    kept = (ids < k)[..., None]
    dx = dmt = dpos = None
    if need_x:
        src = torch.where(kept, grad, 0)
        dx = grad.new_zeros(b, k, d).scatter_add_(1, ids.clamp(max=k - 1)[..., None].expand(-1, -1, d), src)
    if need_mt:
        dmt = torch.where(kept, 0, grad).sum((0, 1), dtype=torch.float32 if grad.dtype != torch.float64
                                             else torch.float64).to(grad.dtype)
    if need_pos:
        dpos = grad.sum(0, dtype=torch.float32 if grad.dtype != torch.float64 else torch.float64).to(grad.dtype)
    return dx, dmt, dpos


def triton_config(d: int, arch: tuple[int, int] | None) -> dict:
    """Tiles for width ``d`` on compute capability ``arch`` (None: the interpreter, small tiles)."""
    block_d = min(128, triton.next_power_of_2(d))
    if arch is None:
        return dict(BLOCK_L=8, BLOCK_D=min(block_d, 16), num_warps=1)
    # 32 positions x up to 128 columns, 4 warps: no spills on sm80/86/89/90 (tests/ops/test_mae_kernels_aot.py)
    return dict(BLOCK_L=32, BLOCK_D=block_d, num_warps=4)


def fwd_plan(x, mt, ids, pos, out, *, arch) -> list:
    """The forward launch: x [B, K, D] with unit column stride (rows through its strides), the rest contiguous."""
    from fastssl.kernels.unshuffle import _unshuffle_fwd_kernel

    b, k, d = x.shape
    n = ids.shape[1]
    cfg = triton_config(d, arch)
    args = (x, mt, ids, pos if pos is not None else mt, out, n, k, d, x.stride(0), x.stride(1))  # mt: unread
    return [(_unshuffle_fwd_kernel, (b, triton.cdiv(n, cfg["BLOCK_L"])), args, dict(HAS_POS=pos is not None, **cfg))]


def bwd_plan(grad, ids, dx, part, *, arch) -> list:
    """The backward launch: grad [B, L, D], ids [B, L], dx [B, K, D], part fp32 [B, D], all contiguous."""
    from fastssl.kernels.unshuffle import _unshuffle_bwd_kernel

    b, n, d = grad.shape
    cfg = triton_config(d, arch)
    return [(_unshuffle_bwd_kernel, (b, triton.cdiv(d, cfg["BLOCK_D"])), (grad, ids, dx, part, n, dx.shape[1], d),
             cfg)]


def _rows_view(x: torch.Tensor) -> torch.Tensor:
    """x itself when its columns are contiguous (the kernel reads rows through the strides), else a copy."""
    return x if x.stride(2) == 1 else x.contiguous()


def fits_int32(x: torch.Tensor, n: int) -> bool:
    """The kernels' 32-bit offsets inside a sample hold: x's per-sample span, L*D."""
    b, k, d = x.shape
    return max((k - 1) * x.stride(1) + (d - 1) * x.stride(2), n * d) <= INT32_MAX


def _triton(x, mt, ids, pos):
    b, k, d = x.shape
    n = ids.shape[1]
    out = torch.empty(b, n, d, dtype=x.dtype, device=x.device)
    plan = fwd_plan(_rows_view(x), mt.contiguous(), ids.contiguous(), pos.contiguous() if pos is not None else None,
                    out, arch=device_arch(x))
    launch(plan, x, strided=("X",))
    return out


def _triton_backward(grad, ids, k, need_x, need_mt, need_pos):
    b, n, d = grad.shape
    grad = grad.contiguous()
    dx = torch.zeros(b, k, d, dtype=grad.dtype, device=grad.device)  # every row is written; zeros for safety
    part = torch.empty(b, d, dtype=torch.float32, device=grad.device)
    launch(bwd_plan(grad, ids.contiguous(), dx, part, arch=device_arch(grad)), grad)
    dmt = part.sum(0).to(grad.dtype) if need_mt else None
    dpos = grad.sum(0, dtype=torch.float32).to(grad.dtype) if need_pos else None
    return (dx if need_x else None), dmt, dpos


def _use_triton(x, n: int):
    backend = choose_backend(x, ("ref", "triton", "native"))
    return backend, backend == "triton" and x.dtype != torch.float64 and fits_int32(x, n)


@torch.library.custom_op("fastssl::unshuffle", mutates_args=())
def _unshuffle_op(x_visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
                  pos_embed: torch.Tensor | None) -> torch.Tensor:
    backend, tri = _use_triton(x_visible, ids_restore.shape[1])
    if tri:
        return _triton(x_visible, mask_token, ids_restore, pos_embed)
    if backend == "ref":
        return unshuffle_ref(x_visible, mask_token, ids_restore, pos_embed).contiguous()
    return _native(x_visible, mask_token, ids_restore, pos_embed)


@_unshuffle_op.register_fake
def _(x_visible, mask_token, ids_restore, pos_embed):
    return x_visible.new_empty(ids_restore.shape[0], ids_restore.shape[1], x_visible.shape[2])


@torch.library.custom_op("fastssl::unshuffle_backward", mutates_args=())
def _unshuffle_backward_op(grad: torch.Tensor, ids_restore: torch.Tensor, num_visible: int, need_x: bool,
                           need_mask_token: bool, need_pos: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Always returns three tensors (zeros-size placeholders for the ones not needed)."""
    _, tri = _use_triton(grad, grad.shape[1])
    fn = _triton_backward if tri else _native_backward
    dx, dmt, dpos = fn(grad, ids_restore, num_visible, need_x, need_mt=need_mask_token, need_pos=need_pos)
    empty = grad.new_empty(0)
    return (empty if dx is None else dx, empty if dmt is None else dmt, empty if dpos is None else dpos)


@_unshuffle_backward_op.register_fake
def _(grad, ids_restore, num_visible, need_x, need_mask_token, need_pos):
    b, n, d = grad.shape
    return (grad.new_empty(b, num_visible, d) if need_x else grad.new_empty(0),
            grad.new_empty(d) if need_mask_token else grad.new_empty(0),
            grad.new_empty(n, d) if need_pos else grad.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, mt, ids, pos = inputs
    ctx.save_for_backward(ids)
    ctx.k = x.shape[1]
    ctx.has_pos = pos is not None


def _backward(ctx, grad):
    (ids,) = ctx.saved_tensors
    need_x, need_mt, need_pos = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]
    need_pos = need_pos and ctx.has_pos
    dx, dmt, dpos = torch.ops.fastssl.unshuffle_backward(grad, ids, ctx.k, need_x, need_mt, need_pos)
    return (dx if need_x else None, dmt if need_mt else None, None, dpos if need_pos else None)


torch.library.register_autograd("fastssl::unshuffle", _backward, setup_context=_setup_context)


def unshuffle(x_visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor,
              pos_embed: torch.Tensor | None = None) -> torch.Tensor:
    """[B, K, D] visible tokens -> [B, L, D] in position order with mask tokens (see module doc).

    Raises ValueError for wrong ranks/shapes (mask_token not D wide, pos_embed not [L, D], K > L),
    non-int64 ids_restore, an id outside [0, L) (CPU), or mixed devices / dtypes (outside autocast).
    """
    check_tensor("x_visible", x_visible, dim=3)
    b, k, d = x_visible.shape
    check_tensor("mask_token", mask_token)
    if mask_token.numel() != d or mask_token.shape[-1] != d:
        raise ValueError(f"mask_token must hold {d} values ([D], [1, D] or [1, 1, D]), got {tuple(mask_token.shape)}")
    mask_token = mask_token.reshape(d)
    check_ids("ids_restore", ids_restore, x_visible, b)
    n = ids_restore.shape[1]
    if k > n:
        raise ValueError(f"x_visible has {k} tokens but ids_restore only {n} positions")
    check_id_range("ids_restore", ids_restore, n)
    cast = x_visible.dtype if autocast_dtype(x_visible.device) is not None else None
    if cast is not None:
        mask_token = mask_token.to(cast)
    check_same("x_visible", x_visible, "mask_token", mask_token)
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed)
        if pos_embed.dim() == 3 and pos_embed.shape[0] == 1:
            pos_embed = pos_embed[0]
        if tuple(pos_embed.shape) != (n, d):
            raise ValueError(f"pos_embed must be [{n}, {d}] or [1, {n}, {d}], got {tuple(pos_embed.shape)}")
        if cast is not None:
            pos_embed = pos_embed.to(cast)
        check_same("x_visible", x_visible, "pos_embed", pos_embed)
    return torch.ops.fastssl.unshuffle(x_visible, mask_token, ids_restore, pos_embed)
