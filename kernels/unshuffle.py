"""Triton device code for MAE's unshuffle (launcher, checks, autograd: fastssl/ops/unshuffle.py).

Forward: out[b, l] = (x[b, r] if r < K else mask_token) + pos[l], r = ids_restore[b, l]: one pass over
the output, reading each visible row once. Backward: dx[b, r] = dout[b, l] for the kept l (a scatter
with unique targets: no atomics); each program also sums dout over its masked rows into one partial
row of dmask_token (reduced over programs by the launcher), so the result is deterministic.
"""

import triton
import triton.language as tl


@triton.jit
def _unshuffle_fwd_kernel(
    X,  # *T [B, K, D] visible tokens (contiguous)
    MT,  # *T [D] mask token
    IDS,  # *int64 [B, L] ids_restore (contiguous)
    POS,  # *T [L, D] position embedding (HAS_POS)
    OUT,  # *T [B, L, D] out
    L, K, D,  # positions, visible tokens, width
    HAS_POS: tl.constexpr,
    BLOCK_L: tl.constexpr,  # positions per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    b = tl.program_id(0).to(tl.int64)
    pos_l = tl.program_id(1).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    l_mask = pos_l < L
    r = tl.load(IDS + b * L + pos_l, mask=l_mask, other=K)
    kept = (r < K) & l_mask
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        d_mask = d < D
        x = tl.load(X + (b * K + r)[:, None] * D + d[None, :], mask=kept[:, None] & d_mask[None, :], other=0.0)
        mt = tl.load(MT + d, mask=d_mask, other=0.0)
        y = tl.where(kept[:, None], x.to(tl.float32), mt.to(tl.float32)[None, :])
        if HAS_POS:  # one rounding of the fp32 sum, as torch's 16-bit add
            y += tl.load(POS + pos_l[:, None] * D + d[None, :], mask=l_mask[:, None] & d_mask[None, :],
                         other=0.0).to(tl.float32)
        tl.store(OUT + (b * L + pos_l)[:, None] * D + d[None, :], y.to(OUT.dtype.element_ty),
                 mask=l_mask[:, None] & d_mask[None, :])


@triton.jit
def _unshuffle_bwd_kernel(
    DOUT,  # *T [B, L, D] upstream gradient (contiguous)
    IDS,  # *int64 [B, L] ids_restore
    DX,  # *T [B, K, D] out: gradient of the visible tokens
    DMT_PART,  # *fp32 [B, D] out: per-sample sum of dout over masked positions
    L, K, D,
    BLOCK_L: tl.constexpr,  # positions per step
    BLOCK_D: tl.constexpr,  # columns per program
):
    b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)
    d_mask = d < D
    acc = tl.zeros([BLOCK_D], tl.float32)
    for l0 in range(0, L, BLOCK_L):
        pos_l = l0 + tl.arange(0, BLOCK_L).to(tl.int64)
        l_mask = pos_l < L
        r = tl.load(IDS + b * L + pos_l, mask=l_mask, other=K)
        kept = (r < K) & l_mask
        g = tl.load(DOUT + (b * L + pos_l)[:, None] * D + d[None, :], mask=l_mask[:, None] & d_mask[None, :],
                    other=0.0)
        tl.store(DX + (b * K + r)[:, None] * D + d[None, :], g, mask=kept[:, None] & d_mask[None, :])
        acc += tl.sum(tl.where(kept[:, None], 0.0, g.to(tl.float32)), axis=0)
    tl.store(DMT_PART + b * D + d, acc, mask=d_mask)
