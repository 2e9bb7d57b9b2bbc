"""Triton device code for the masked patch embedding (launcher, checks, autograd:
fastssl/ops/masked_patch_embed.py).

out[m, n] = sum_r A[m, r] * Wf[n, r] + bias[n] + pos[l_m, n] for the M = B*L_keep kept tokens, where
token m = (b, k) is patch l_m = ids_keep[b, k] at grid cell (l_m // gw, l_m % gw), r = (c, i, j)
runs over the C*p*p pixels of the patch in Conv2d weight order, A[m, r] is read straight from the
strided image (NCHW or NHWC: any strides) and Wf = weight.reshape(D, C*p*p). An implicit-GEMM
convolution restricted to the kept patches: no patchified copy of the image exists.
"""

import triton
import triton.language as tl


@triton.jit
def _masked_patch_embed_fwd_kernel(
    IMG,  # *T [B, C, H, W] with strides (s_b, s_c, s_h, s_w)
    IDS,  # *int64 [B, K] kept patch positions (contiguous)
    WF,  # *T [D, R] flattened Conv2d weight (contiguous), R = C*p*p
    BIAS,  # *T [D] (HAS_BIAS)
    POS,  # *T [L, D] position embedding (contiguous; HAS_POS)
    OUT,  # *T [M, D] out, M = B*K
    M, K, D, R,  # tokens, kept per sample, embed dim, pixels per patch
    GW,  # patches per image row
    s_b, s_c, s_h, s_w,  # image strides (elements)
    P: tl.constexpr,  # patch size
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    UPCAST: tl.constexpr,  # load as fp32 (interpreter: no 16-bit arithmetic)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 (as Conv2d's cudnn.allow_tf32)
    BLOCK_M: tl.constexpr,  # tokens per program
    BLOCK_N: tl.constexpr,  # output channels per program
    BLOCK_R: tl.constexpr,  # pixels per step of the reduction
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_mask = cols < D
    b = rows // K
    patch = tl.load(IDS + rows, mask=row_mask, other=0)
    base = b * s_b + (patch // GW) * P * s_h + (patch % GW) * P * s_w  # top-left pixel of each kept patch
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        r_mask = r < R
        c = r // (P * P)
        i = (r // P) % P
        j = r % P
        a = tl.load(IMG + base[:, None] + (c * s_c + i * s_h + j * s_w)[None, :],
                    mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        w = tl.load(WF + cols[None, :] * R + r[:, None], mask=r_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        acc += tl.load(POS + patch[:, None] * D + cols[None, :], mask=row_mask[:, None] & col_mask[None, :],
                       other=0.0).to(tl.float32)
    tl.store(OUT + rows[:, None] * D + cols[None, :], acc.to(OUT.dtype.element_ty),
             mask=row_mask[:, None] & col_mask[None, :])
