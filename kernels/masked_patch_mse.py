"""Triton device code for MAE's masked-patch MSE (launcher, checks, autograd:
fastssl/ops/masked_patch_mse.py).

Row m = (b, l) is patch l of sample b; its target t[j], j = (i, q, c) in the original ``patchify``
order (row i, column q, channel c), is read straight from the strided image. With NORM_PIX the target
is (t - mean) / sqrt(var + 1e-6), mean and unbiased variance over the P = p*p*C values, computed on
t - t[0] (exact zeros for a constant patch, and no cancellation for a large common offset).
Rows whose weight w = mask[b, l] is 0 are not read at all (masked loads). All arithmetic in fp32.
Forward: err[m] = mean_j (pred[m, j] - target[j])^2 (the launcher reduces sum(w * err) / sum(w)).
Backward: dpred[m, j] = coef * w[m] * 2 (pred[m, j] - target[j]) / P, zeros for w = 0.
"""

import triton
import triton.language as tl

_EPS = tl.constexpr(1e-6)


@triton.jit
def _row_error(PRED, IMG, W, rows, M, L, GW, s_b, s_c, s_h, s_w, P: tl.constexpr, C: tl.constexpr,
               NPIX: tl.constexpr, NORM_PIX: tl.constexpr, BLOCK_P: tl.constexpr):
    """(pred - target) [BLOCK_M, BLOCK_P] fp32 for rows ``rows`` (zeros where w = 0), w, column mask."""
    row_ok = rows < M
    w = tl.load(W + rows, mask=row_ok, other=0.0).to(tl.float32)
    active = row_ok & (w != 0.0)
    j = tl.arange(0, BLOCK_P).to(tl.int64)
    j_ok = j < NPIX
    i = j // (P * C)
    q = (j // C) % P
    c = j % C
    b = rows // L
    patch = rows % L
    base = b * s_b + (patch // GW) * P * s_h + (patch % GW) * P * s_w
    m2 = active[:, None] & j_ok[None, :]
    t = tl.load(IMG + base[:, None] + (c * s_c + i * s_h + q * s_w)[None, :], mask=m2, other=0.0).to(tl.float32)
    if NORM_PIX:
        shift = tl.sum(tl.where(j[None, :] == 0, t, 0.0), axis=1)  # the patch's first value
        t = tl.where(m2, t - shift[:, None], 0.0)
        mean = tl.sum(t, axis=1) / NPIX
        t = tl.where(m2, t - mean[:, None], 0.0)
        var = tl.sum(t * t, axis=1) / (NPIX - 1)
        t = t / tl.sqrt(var + _EPS)[:, None]
    pr = tl.load(PRED + rows[:, None] * NPIX + j[None, :], mask=m2, other=0.0).to(tl.float32)
    return tl.where(m2, pr - t, 0.0), w, m2


@triton.jit
def _masked_patch_mse_fwd_kernel(
    PRED,  # *T [B*L, NPIX] predictions (contiguous), pixel order (i, q, c)
    IMG,  # *T [B, C, H, W] images, strides (s_b, s_c, s_h, s_w)
    W,  # *float [B*L] per-patch weight (the mask: 1 = masked, counted in the loss)
    ERR,  # *fp32 [B*L] out: per-patch mean squared error (0 where w = 0)
    M, L, GW,  # rows B*L, patches per image, patches per image row
    s_b, s_c, s_h, s_w,
    P: tl.constexpr,  # patch size
    C: tl.constexpr,  # channels
    NPIX: tl.constexpr,  # P * P * C
    NORM_PIX: tl.constexpr,  # per-patch normalized target
    BLOCK_M: tl.constexpr,  # patches per program
    BLOCK_P: tl.constexpr,  # next power of two >= NPIX
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    diff, w, m2 = _row_error(PRED, IMG, W, rows, M, L, GW, s_b, s_c, s_h, s_w, P, C, NPIX, NORM_PIX, BLOCK_P)
    tl.store(ERR + rows, tl.sum(diff * diff, axis=1) / NPIX, mask=rows < M)


@triton.jit
def _masked_patch_mse_bwd_kernel(
    PRED, IMG, W,  # as in the forward
    COEF,  # *fp32 [1]: upstream gradient / sum(w)
    DPRED,  # *T [B*L, NPIX] out
    M, L, GW,
    s_b, s_c, s_h, s_w,
    P: tl.constexpr, C: tl.constexpr, NPIX: tl.constexpr, NORM_PIX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    diff, w, m2 = _row_error(PRED, IMG, W, rows, M, L, GW, s_b, s_c, s_h, s_w, P, C, NPIX, NORM_PIX, BLOCK_P)
    coef = tl.load(COEF) * 2.0 / NPIX
    g = diff * (w * coef)[:, None]
    j = tl.arange(0, BLOCK_P).to(tl.int64)
    tl.store(DPRED + rows[:, None] * NPIX + j[None, :], g.to(DPRED.dtype.element_ty),
             mask=(rows < M)[:, None] & (j < NPIX)[None, :])
