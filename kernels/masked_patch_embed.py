"""Triton device code for the masked patch embedding (launcher, checks, autograd:
fastssl/ops/masked_patch_embed.py).

out[m, n] = sum_r A[m, r] * Wf[n, r] + bias[n] + pos[l_m, n] for the M = B*L_keep kept tokens, where
token m = (b, k) is patch l_m = ids_keep[b, k] at grid cell (l_m // gw, l_m % gw), r runs over the
C*p*p pixels of the patch, A[m, r] is read straight from the strided image and Wf is the weight
flattened in the same pixel order. An implicit-GEMM convolution restricted to the kept patches: no
patchified copy of the image exists.

Pixel order: (c, i, j) (Conv2d's weight order; any image strides), or with CHANNELS_LAST (an image whose
pixel rows hold their p*C values contiguously, channels_last memory) (i, j, c), so that the gather
reads p*C contiguous values per patch row; the launcher then passes the weight permuted to
[D, p, p, C]. The sum over r is the same either way (only its rounding order differs).

Indexing: each token's image offset (sample x batch stride + patch corner) is 64-bit; offsets inside a
patch, token and column indices are 32-bit (the launcher checks that one sample's span, M, D*R and
L*D fit in int32); the output block's base (program x BLOCK_M x D) is 64-bit.
"""

import triton
import triton.language as tl


@triton.jit
def _masked_patch_embed_fwd_kernel(
    IMG,  # *T images [B, C, H, W], read through the strides s_b, s_c, s_h, s_w
    IDS,  # *int64 [M] kept patch of each token (ids_keep, contiguous)
    WF,  # *T [D, R] flattened weight, contiguous, R = C*p*p in the kernel's pixel order
    BIAS,  # *T [D] contiguous (read when HAS_BIAS)
    POS,  # *T [L, D] position embedding, contiguous (read when HAS_POS)
    OUT,  # *T [M, D] out, contiguous
    M, K, D,  # tokens, kept per sample, embed dim
    GW,  # patches per image row
    s_b, s_c, s_h, s_w,  # image strides (elements)
    P: tl.constexpr,  # patch size
    C: tl.constexpr,  # channels
    CHANNELS_LAST: tl.constexpr,  # s_c == 1 and s_w == C: pixel order (i, j, c)
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    UPCAST: tl.constexpr,  # load as fp32 (interpreter: no 16-bit arithmetic)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 (as Conv2d's cudnn.allow_tf32)
    BLOCK_M: tl.constexpr,  # tokens per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_R: tl.constexpr,  # pixels per step of the reduction
):
    R: tl.constexpr = C * P * P
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    rows = pid_m * BLOCK_M + offs_m
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # tail rows / columns re-read the last token / channel: unmasked loads, only the store is masked
    rows_c = tl.minimum(rows, M - 1)
    cols_c = tl.minimum(cols, D - 1)
    patch = tl.load(IDS + rows_c).to(tl.int32)
    py = patch // GW
    px = patch - py * GW
    b = rows_c // K
    # 64-bit per-token base: sample offset (may pass 2**31 elements) + the patch's top-left pixel
    img_rows = IMG + (b.to(tl.int64) * s_b + (py * (P * s_h) + px * (P * s_w)))
    w_rows = WF + cols_c * R
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        if CHANNELS_LAST:  # row i of the patch, then its p*C contiguous values
            off = (r // (P * C)) * s_h + r % (P * C)
        else:
            off = (r // (P * P)) * s_c + ((r // P) % P) * s_h + (r % P) * s_w
        if R % BLOCK_R == 0:
            a = tl.load(img_rows[:, None] + off[None, :])
            w = tl.load(w_rows[None, :] + r[:, None])
        else:
            r_ok = r < R
            a = tl.load(img_rows[:, None] + off[None, :], mask=r_ok[None, :], other=0.0)
            w = tl.load(w_rows[None, :] + r[:, None], mask=r_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    # epilogue loads masked on the unclamped columns: the clamp would hide their contiguity (scalar loads)
    col_ok = cols < D
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        acc += tl.load(POS + (patch * D)[:, None] + cols[None, :], mask=col_ok[None, :], other=0.0).to(tl.float32)
    out = OUT + pid_m.to(tl.int64) * BLOCK_M * D  # 64-bit block base, 32-bit offsets inside it
    tl.store(out + (offs_m * D)[:, None] + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=(rows < M)[:, None] & col_ok[None, :])
