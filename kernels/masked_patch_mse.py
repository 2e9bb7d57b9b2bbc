"""Triton device code for MAE's masked-patch MSE (launcher, checks, autograd:
fastssl/ops/masked_patch_mse.py).

Row m = (b, l) is patch l of sample b; its target t[j], j = (i, q, c) in the original ``patchify``
order (row i, column q, channel c), is read straight from the strided image (with CHANNELS_LAST, an
image whose pixel rows hold their W*C values contiguously, a patch row's p*C values are one contiguous
run). With NORM_PIX the target is (t - mean) / sqrt(var + 1e-6), mean and unbiased variance over the
P = p*p*C values, computed on t - t[0] (exact zeros for a constant patch, and no cancellation for a
large common offset). Rows whose weight w = mask[b, l] is 0 are not read at all (masked loads). All
arithmetic in fp32.
Forward: err[m] = mean_j (pred[m, j] - target[j])^2 (the launcher reduces sum(w * err) / sum(w)).
Backward: dpred[m, j] = coef * w[m] * 2 (pred[m, j] - target[j]) / P, zeros for w = 0.

Indexing: a row's image offset (sample x batch stride + patch corner) and a program's pred/dpred base
are 64-bit; row indices and offsets inside a patch are 32-bit (the launcher checks that B*L and one
sample's span fit in int32).
"""

import triton
import triton.language as tl

_EPS = tl.constexpr(1e-6)


@triton.jit
def _row_error(PRED, IMG, W, pid, M, L, GW, s_b, s_c, s_h, s_w, P: tl.constexpr, C: tl.constexpr,
               NPIX: tl.constexpr, NORM_PIX: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_P: tl.constexpr):
    """(pred - target) [BLOCK_M, BLOCK_P] fp32 for program ``pid``'s rows (zeros where w = 0), w, and the
    [BLOCK_M, BLOCK_P] mask of real (row, pixel) pairs with w != 0."""
    offs_m = tl.arange(0, BLOCK_M)
    rows = pid * BLOCK_M + offs_m
    row_ok = rows < M
    w = tl.load(W + rows, mask=row_ok, other=0.0).to(tl.float32)
    active = row_ok & (w != 0.0)
    j = tl.arange(0, BLOCK_P)
    j_ok = j < NPIX
    if CHANNELS_LAST:  # row i of the patch, then its p*C contiguous values
        off = (j // (P * C)) * s_h + j % (P * C)
    else:
        off = (j // (P * C)) * s_h + ((j // C) % P) * s_w + (j % C) * s_c
    b = rows // L
    patch = rows - b * L
    py = patch // GW
    px = patch - py * GW
    img_rows = IMG + (b.to(tl.int64) * s_b + (py * (P * s_h) + px * (P * s_w)))
    m2 = active[:, None] & j_ok[None, :]
    t = tl.load(img_rows[:, None] + off[None, :], mask=m2, other=0.0).to(tl.float32)
    if NORM_PIX:
        shift = tl.load(img_rows, mask=active, other=0.0).to(tl.float32)  # the patch's first value
        t = tl.where(m2, t - shift[:, None], 0.0)
        mean = tl.sum(t, axis=1) / NPIX
        t = tl.where(m2, t - mean[:, None], 0.0)
        var = tl.sum(t * t, axis=1) / (NPIX - 1)
        t = t / tl.sqrt(var + _EPS)[:, None]
    pred = PRED + pid.to(tl.int64) * BLOCK_M * NPIX  # 64-bit block base, 32-bit offsets inside it
    pr = tl.load(pred + (offs_m * NPIX)[:, None] + j[None, :], mask=m2, other=0.0).to(tl.float32)
    return tl.where(m2, pr - t, 0.0), w, m2


@triton.jit
def _masked_patch_mse_fwd_kernel(
    PRED,  # *T [B*L, NPIX] predictions (contiguous), pixel order (i, q, c)
    IMG,  # *T [B, C, H, W] images, read through the strides (s_b, s_c, s_h, s_w)
    W,  # *float [B*L] per-patch weight (the mask: 1 = masked, counted in the loss; contiguous)
    ERR,  # *fp32 [B*L] out: per-patch mean squared error (0 where w = 0)
    M, L, GW,  # rows B*L, patches per image, patches per image row
    s_b, s_c, s_h, s_w,
    P: tl.constexpr,  # patch size
    C: tl.constexpr,  # channels
    NPIX: tl.constexpr,  # P * P * C
    NORM_PIX: tl.constexpr,  # per-patch normalized target
    CHANNELS_LAST: tl.constexpr,  # s_c == 1 and s_w == C
    BLOCK_M: tl.constexpr,  # patches per program
    BLOCK_P: tl.constexpr,  # next power of two >= NPIX
):
    pid = tl.program_id(0)
    diff, w, m2 = _row_error(PRED, IMG, W, pid, M, L, GW, s_b, s_c, s_h, s_w, P, C, NPIX, NORM_PIX, CHANNELS_LAST,
                             BLOCK_M, BLOCK_P)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(ERR + rows, tl.sum(diff * diff, axis=1) / NPIX, mask=rows < M)


@triton.jit
def _masked_patch_mse_bwd_kernel(
    PRED, IMG, W,  # as in the forward
    COEF,  # *fp32 [1]: upstream gradient / sum(w)
    DPRED,  # *T [B*L, NPIX] out (contiguous)
    M, L, GW,
    s_b, s_c, s_h, s_w,
    P: tl.constexpr, C: tl.constexpr, NPIX: tl.constexpr, NORM_PIX: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    diff, w, m2 = _row_error(PRED, IMG, W, pid, M, L, GW, s_b, s_c, s_h, s_w, P, C, NPIX, NORM_PIX, CHANNELS_LAST,
                             BLOCK_M, BLOCK_P)
    coef = tl.load(COEF) * 2.0 / NPIX
    g = diff * (w * coef)[:, None]
    offs_m = tl.arange(0, BLOCK_M)
    j = tl.arange(0, BLOCK_P)
    dpred = DPRED + pid.to(tl.int64) * BLOCK_M * NPIX
    tl.store(dpred + (offs_m * NPIX)[:, None] + j[None, :], g.to(DPRED.dtype.element_ty),
             mask=(pid * BLOCK_M + offs_m < M)[:, None] & (j < NPIX)[None, :])
