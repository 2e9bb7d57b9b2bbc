"""Triton device code for MAE's unshuffle (launcher, checks, autograd: fastssl/ops/unshuffle.py).

Forward: out[b, l] = (x[b, r] if r < K else mask_token) + pos[l], r = ids_restore[b, l]: one pass over
the output, reading each visible row once. Backward: dx[b, r] = dout[b, l] for the kept l (a scatter
with unique targets: no atomics); each program also sums dout over its masked rows into one partial
row of dmask_token (reduced over programs by the launcher), so the result is deterministic.

Indexing: a sample's base offset (b x its batch stride) is 64-bit; offsets inside a sample are 32-bit
(the launcher checks that a sample's L*D, K*D and x's per-sample span fit in int32).
"""

import triton
import triton.language as tl


@triton.jit
def _unshuffle_fwd_kernel(
    X,  # *T [B, K, D] visible tokens: rows through the strides s_xb, s_xk, columns contiguous
    MT,  # *T [D] mask token (contiguous)
    IDS,  # *int64 [B, L] ids_restore (contiguous)
    POS,  # *T [L, D] position embedding (contiguous; read when HAS_POS)
    OUT,  # *T [B, L, D] out (contiguous)
    L, K, D,  # positions, visible tokens, width
    s_xb, s_xk,  # x's batch and token strides (elements; e.g. x[:, 1:] of the decoder's [B, 1+K, D])
    HAS_POS: tl.constexpr,
    BLOCK_L: tl.constexpr,  # positions per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    b = tl.program_id(0).to(tl.int64)
    pos_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    l_mask = pos_l < L
    r = tl.load(IDS + b * L + pos_l, mask=l_mask, other=K).to(tl.int32)
    kept = (r < K) & l_mask
    x_rows = X + b * s_xb + r * s_xk
    out_rows = OUT + b * L * D + pos_l * D
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        d_mask = d < D
        x = tl.load(x_rows[:, None] + d[None, :], mask=kept[:, None] & d_mask[None, :], other=0.0)
        mt = tl.load(MT + d, mask=d_mask, other=0.0)
        y = tl.where(kept[:, None], x.to(tl.float32), mt.to(tl.float32)[None, :])
        if HAS_POS:  # one rounding of the fp32 sum, as torch's 16-bit add
            y += tl.load(POS + (pos_l * D)[:, None] + d[None, :], mask=l_mask[:, None] & d_mask[None, :],
                         other=0.0).to(tl.float32)
        tl.store(out_rows[:, None] + d[None, :], y.to(OUT.dtype.element_ty), mask=l_mask[:, None] & d_mask[None, :])


@triton.jit
def _unshuffle_bwd_kernel(
    DOUT,  # *T [B, L, D] upstream gradient (contiguous)
    IDS,  # *int64 [B, L] ids_restore (contiguous)
    DX,  # *T [B, K, D] out: gradient of the visible tokens (contiguous)
    DMT_PART,  # *fp32 [B, D] out: per-sample sum of dout over masked positions
    L, K, D,
    BLOCK_L: tl.constexpr,  # positions per step
    BLOCK_D: tl.constexpr,  # columns per program
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    dout_b = DOUT + b * L * D
    dx_b = DX + b * K * D
    ids_b = IDS + b * L
    acc = tl.zeros([BLOCK_D], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        pos_l = l0 + tl.arange(0, BLOCK_L)
        l_mask = pos_l < L
        r = tl.load(ids_b + pos_l, mask=l_mask, other=K).to(tl.int32)
        kept = (r < K) & l_mask
        g = tl.load(dout_b + (pos_l * D)[:, None] + d[None, :], mask=l_mask[:, None] & d_mask[None, :], other=0.0)
        tl.store(dx_b + (r * D)[:, None] + d[None, :], g, mask=kept[:, None] & d_mask[None, :])
        acc += tl.sum(tl.where(kept[:, None], 0.0, g.to(tl.float32)), axis=0)
    tl.store(DMT_PART + b * D + d, acc, mask=d_mask)
