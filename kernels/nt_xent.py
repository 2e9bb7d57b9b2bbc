"""Triton device code for NT-Xent / InfoNCE (launchers, torch.library ops and autograd live in
fastssl/ops/nt_xent.py).

Notation: queries Q [M, D], keys K [Nk, D] as the caller passed them (raw, NOT normalized), their
inverse norms rq_i = 1 / max(|q_i|, eps), rk_j (fp32, from ``_row_rnorm_kernel``; all ones when
normalize=False, where the kernels skip them), cosine S_ij = rq_i rk_j <q_i, k_j>, logits S_ij / tau.
Fused normalization: the raw 16-bit rows go to tl.dot (fp32 accumulation) and each similarity tile is
scaled in fp32 by rq_i rk_j; the normalization's backward runs in the fp32 epilogue of the gradient
kernels. Nothing is rounded to 16 bits between the input and the logits.

Row i's candidates are every key j except, with EXCLUDE_SELF, the key j == i + self_offset. Per-row
loss: lse_i - S_{i,pos(i)} / tau; tau is read from a device tensor (no host sync; a learnable tau
gets dL/dtau from the per-row radial terms RAD_i = <dL/du_i, u_i> the gradient kernels write).

Lean inner loops: the key range is walked as full tiles (no bounds masks) plus one tail tile (column
mask). The self-exclusion and positive tests run only in the tiles that hold a self key or a
positive of the program's rows (a uniform scalar branch per tile); the positive's -1 (-2 for the
symmetric loss) enters G in fp32 before the cast, so in the converged regime, where P_i,pos ~ 1, the
cancellation happens before any 16-bit rounding. In-tile indices are 32-bit, only per-program base
offsets are 64-bit; 1/tau, log2(e) and 1/|z_i| fold into one per-row factor feeding exp2. The forward
adds the positive's logit in its epilogue (one gathered row per query).

The gradient tiles G are cast to the input dtype for the second tensor-core dot. For fp16 they are
first scaled by G_SCALE / max_j rk_j (undone in fp32 in the epilogue): P_ij ~ 1/2N or smaller is
subnormal in fp16 otherwise.

No atomics: each program owns its output rows, so results are bitwise reproducible.
Interpreter (TRITON_INTERPRET=1): UPCAST loads 16-bit inputs as fp32 (the numpy interpreter has no
bf16 arithmetic) and rounds G to the input dtype exactly as the GPU cast would (round to nearest even),
so the interpreter sees the kernel's 16-bit rounding.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E) (host float, for the launchers)
LN2 = 0.6931471805599453  # ln(2): back from base-2 to natural log
NORM_EPS = 1e-12  # F.normalize's eps: u = x / max(|x|, eps)
G_SCALE = 16384.0  # fp16 G scale: |G| <= 2 -> <= 32768 < 65504 (fp16 max); P ~ 1e-7 stays normal
# Compiled kernels may only read constexpr globals.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)
_NORM_EPS = tl.constexpr(NORM_EPS)
_G_SCALE = tl.constexpr(G_SCALE)
_NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: exp2(-inf - it) = 0, no NaN


# ---------------------------------------------------------------------------------------------------
# helpers


@triton.jit
def _load_tile(base, offs, rows_left, d, D, MASK_ROWS: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr):
    """Rows [0, BLOCK) of a row-major [*, D] block at ``base`` (``offs`` = in-tile 32-bit offsets);
    rows >= rows_left (MASK_ROWS) and columns >= D (not EVEN_D) read as 0; fp32 when UPCAST."""
    if MASK_ROWS:
        r = tl.arange(0, offs.shape[0])
        if EVEN_D:
            x = tl.load(base + offs, mask=(r < rows_left)[:, None], other=0.0)
        else:
            x = tl.load(base + offs, mask=(r < rows_left)[:, None] & (d < D)[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(base + offs)
        else:
            x = tl.load(base + offs, mask=(d < D)[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _to_dot(x, IN_DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 tile -> the second dot's operand dtype. Interpreter: the same rounding, kept in fp32."""
    if UPCAST:
        if IN_DTYPE == tl.bfloat16:  # round to nearest even on the bits (the interpreter's cast truncates)
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        elif IN_DTYPE == tl.float16:
            return x.to(tl.float16).to(tl.float32)
        else:
            return x
    else:
        return x.to(IN_DTYPE)


@triton.jit
def _row_rnorm_kernel(
    X,  # *T [R, D] contiguous rows
    RN,  # *fp32 [R] out: 1 / max(|x_r|, eps)
    R,  # rows
    D,  # width
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # columns per step
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base = X + pid.to(tl.int64) * BLOCK_R * D
    ssq = tl.zeros([BLOCK_R], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(base + tl.arange(0, BLOCK_R)[:, None] * D + d[None, :],
                    mask=rmask[:, None] & (d < D)[None, :], other=0.0).to(tl.float32)
        ssq += tl.sum(x * x, 1)
    rn = tl.div_rn(1.0, tl.maximum(tl.sqrt_rn(ssq), _NORM_EPS))
    tl.store(RN + rows, rn, mask=rmask)


# ---------------------------------------------------------------------------------------------------
# forward


@triton.jit
def _fwd_tile(m_i, l_i, q, K, RNK, start, offs_n, d, a_i, self_col, special, NK, D,
              EXCLUDE_SELF: tl.constexpr, NORMALIZE: tl.constexpr, EVEN_D: tl.constexpr,
              UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    k = _load_tile(K + tl.cast(start, tl.int64) * D, offs_n, NK - start, d, D, True, EVEN_D, UPCAST)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # fp32 [BLOCK_M, BLOCK_N] raw dots
    if NORMALIZE:
        rk = tl.load(RNK + cols, mask=cols < NK, other=0.0)
        s = s * rk[None, :]
    s2 = s * a_i[:, None]  # base-2 logits
    if special:  # only the tiles that hold self keys or the tail pay for the masks
        valid = (cols < NK)[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[None, :] != self_col[:, None])
        s2 = tl.where(valid, s2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s2, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s2 - m_new[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _hits(start, lo, hi, BLOCK_N: tl.constexpr):
    """Does key tile [start, start + BLOCK_N) intersect [lo, hi)?"""
    return (start < hi) & (start + BLOCK_N > lo) & (lo < hi)


@triton.jit
def _fwd_epilogue(lse2, Q, K, RNK, POS, LSE, LOSS, row0, rows, row_mask, a_i, self_col, d, offs_m, M, NK, D, HALF,
                  EXCLUDE_SELF: tl.constexpr, POS_HALF: tl.constexpr, NORMALIZE: tl.constexpr):
    """The positive's logit (one gathered row per query, products summed in fp32), then lse and loss."""
    if POS_HALF:
        pos = tl.where(rows < HALF, rows + HALF, rows - HALF)
        ok = row_mask
    else:
        pos = tl.load(POS + rows, mask=row_mask, other=0)
        ok = row_mask & (pos >= 0) & (pos < NK)
        if EXCLUDE_SELF:
            ok = ok & (pos != self_col)
        pos = tl.where(ok, pos, 0)
    kp = tl.load(K + pos.to(tl.int64)[:, None] * D + d[None, :], mask=ok[:, None] & (d < D)[None, :],
                 other=0.0).to(tl.float32)
    qf = tl.load(Q + tl.cast(row0, tl.int64) * D + offs_m, mask=row_mask[:, None] & (d < D)[None, :],
                 other=0.0).to(tl.float32)  # from L2, not kept live through the loop
    s_pos = tl.sum(qf * kp, 1) * a_i
    if NORMALIZE:
        s_pos = s_pos * tl.load(RNK + pos, mask=ok, other=0.0)
    loss = (lse2 - s_pos) * _LN2
    loss = tl.where(ok, loss, float("nan"))  # invalid positive_index: NaN, never a silent number
    tl.store(LSE + rows, lse2 * _LN2, mask=row_mask)
    tl.store(LOSS + rows, loss, mask=row_mask)


@triton.jit
def _row_scale(RNQ, TAU, rows, row_mask, NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr):
    """a_i = log2(e) / tau * (1/|q_i| when NORMALIZE): raw dot -> base-2 logit."""
    qk_scale = _LOG2E / tl.load(TAU)
    if NORMALIZE:
        return tl.load(RNQ + rows, mask=row_mask, other=0.0) * qk_scale
    else:
        return tl.zeros([BLOCK_M], tl.float32) + qk_scale


@triton.jit
def _info_nce_fwd_kernel(
    Q,  # *T [M, D] contiguous raw queries
    K,  # *T [Nk, D] contiguous raw keys
    RNQ,  # *fp32 [M] inverse query norms (NORMALIZE)
    RNK,  # *fp32 [Nk] inverse key norms (NORMALIZE)
    POS,  # *int64 [M] positives (unless POS_HALF)
    TAU,  # *fp32 [1] temperature
    LSE,  # *fp32 [M] out: logsumexp over the candidates of row i, natural log, logit units (not SPLIT_K)
    LOSS,  # *fp32 [M] out: lse_i - S_{i,pos(i)} / tau (NaN for an invalid positive) (not SPLIT_K)
    PM,  # *fp32 [splits, M] out (SPLIT_K): running max of split program_id(1) (base-2 logits)
    PL,  # *fp32 [splits, M] out (SPLIT_K): its sum of exp2(logit - max)
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    HALF,  # POS_HALF: pos(i) = (i + HALF) mod M
    key_chunk,  # keys per split (a multiple of BLOCK_N; >= NK when unsplit)
    EXCLUDE_SELF: tl.constexpr,  # drop key i + self_offset from row i's candidates
    POS_HALF: tl.constexpr,  # NT-Xent's positives, computed instead of read
    NORMALIZE: tl.constexpr,  # cosine similarity (scale by RNQ, RNK)
    SPLIT_K: tl.constexpr,  # write the split's partial (max, sum) instead of lse/loss (combined by the kernel below)
    EVEN_D: tl.constexpr,  # D == BLOCK_D: no column masks
    UPCAST: tl.constexpr,  # load as fp32 (interpreter: no bf16 arithmetic)
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for fp32 inputs, "tf32" otherwise (ignored for 16-bit)
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per step of the stream
    BLOCK_D: tl.constexpr,  # next power of two >= D (whole rows stay in registers)
):
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    offs_n = tl.arange(0, BLOCK_N)[:, None] * D + d[None, :]
    q = _load_tile(Q + tl.cast(row0, tl.int64) * D, offs_m, M - row0, d, D, True, EVEN_D, UPCAST)
    a_i = _row_scale(RNQ, TAU, rows, row_mask, NORMALIZE, BLOCK_M)
    self_col = rows + self_offset

    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)  # running max of base-2 logits
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(logit - m_i)
    first = row0 + self_offset  # self keys of this row block: [first, first + BLOCK_M)
    k_lo = tl.program_id(1) * key_chunk  # this program's key range [k_lo, k_hi) (split-K)
    k_hi = tl.minimum(k_lo + key_chunk, NK)
    for start in range(k_lo, k_hi, BLOCK_N):
        special = start + BLOCK_N > NK
        if EXCLUDE_SELF:
            special = special | _hits(start, first, first + BLOCK_M, BLOCK_N)
        m_i, l_i = _fwd_tile(m_i, l_i, q, K, RNK, start, offs_n, d, a_i, self_col, special, NK, D,
                             EXCLUDE_SELF, NORMALIZE, EVEN_D, UPCAST, DOT_PRECISION, BLOCK_N)
    if SPLIT_K:
        part = tl.program_id(1).to(tl.int64) * M + rows
        tl.store(PM + part, m_i, mask=row_mask)
        tl.store(PL + part, l_i, mask=row_mask)
    else:
        _fwd_epilogue(m_i + tl.log2(l_i), Q, K, RNK, POS, LSE, LOSS, row0, rows, row_mask, a_i, self_col, d, offs_m,
                      M, NK, D, HALF, EXCLUDE_SELF, POS_HALF, NORMALIZE)


@triton.jit
def _info_nce_fwd_combine_kernel(
    Q, K, RNQ, RNK, POS, TAU, LSE, LOSS,  # as in _info_nce_fwd_kernel
    PM,  # *fp32 [splits, M] partial maxima
    PL,  # *fp32 [splits, M] partial sums
    M, NK, D, self_offset, HALF,  # as in _info_nce_fwd_kernel
    n_split,  # number of key splits
    EXCLUDE_SELF: tl.constexpr, POS_HALF: tl.constexpr, NORMALIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # split-K combine, in split order (deterministic): lse2 = max + log2(sum_s l_s exp2(m_s - max))
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for s in range(0, n_split):
        part = tl.cast(s, tl.int64) * M + rows
        m_s = tl.load(PM + part, mask=row_mask, other=_NEG_BIG)
        l_s = tl.load(PL + part, mask=row_mask, other=0.0)
        m_new = tl.maximum(m_i, m_s)
        l_i = l_i * tl.exp2(m_i - m_new) + l_s * tl.exp2(m_s - m_new)
        m_i = m_new
    l_i = tl.where(row_mask, l_i, 1.0)  # rows past M: no log2(0)
    a_i = _row_scale(RNQ, TAU, rows, row_mask, NORMALIZE, BLOCK_M)
    _fwd_epilogue(m_i + tl.log2(l_i), Q, K, RNK, POS, LSE, LOSS, row0, rows, row_mask, a_i, rows + self_offset, d,
                  offs_m, M, NK, D, HALF, EXCLUDE_SELF, POS_HALF, NORMALIZE)


# ---------------------------------------------------------------------------------------------------
# backward: symmetric NT-Xent, one pass per row block


@triton.jit
def _nt_xent_bwd_tile(acc, ps, zi, Z, RN, LSE, WCOL, start, offs_n, d, a_i, lse_i, self_col, pos, w_row, special,
                      c_scale, NK, D, NORMALIZE: tl.constexpr, SCALE_G: tl.constexpr, WEIGHTED: tl.constexpr,
                      NEED_PS: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr, IN_DTYPE: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    cmask = cols < NK
    zj = _load_tile(Z + tl.cast(start, tl.int64) * D, offs_n, NK - start, d, D, True, EVEN_D, UPCAST)
    s = tl.dot(zi, tl.trans(zj), input_precision=DOT_PRECISION)
    lse_j = tl.load(LSE + cols, mask=cmask, other=0.0) * _LOG2E
    if NORMALIZE:
        rj = tl.load(RN + cols, mask=cmask, other=0.0)
        s = s * rj[None, :]
    s2 = s * a_i[:, None]
    p_ij = tl.exp2(s2 - lse_i[:, None])
    if WEIGHTED:  # gathered: w_i P_ij + w_j P_ji, w = the owner rank's upstream gradient / max |w|
        w_j = tl.load(WCOL + cols, mask=cmask, other=0.0)
        g = p_ij * w_row + tl.exp2(s2 - lse_j[None, :]) * w_j[None, :]
    else:
        g = p_ij + tl.exp2(s2 - lse_j[None, :])  # P_ij + P_ji
    if NEED_PS:  # sum_j P_ij s_ij (base-2 logits), for dL/dtau of the gathered loss
        e = p_ij * s2
    if special:  # tiles holding self keys, positives or the tail: masks, and the -2 in fp32 before the cast
        valid = (cols[None, :] != self_col[:, None]) & cmask[None, :]
        g = tl.where(valid, g, 0.0)  # a select: drops inf too
        g = g - tl.where(cols[None, :] == pos[:, None], 2.0 * w_row, 0.0)
        if NEED_PS:
            e = tl.where(valid, e, 0.0)
    if NEED_PS:
        ps += tl.sum(e, 1)
    if NORMALIZE:  # G_ij * r_j (and the fp16 scale) so that the dot with the raw rows gives sum_j G_ij u_j
        g = g * (rj * c_scale)[None, :]
    elif SCALE_G:
        g = g * c_scale
    return acc + tl.dot(_to_dot(g, IN_DTYPE, UPCAST), zj, input_precision=DOT_PRECISION), ps


@triton.jit
def _g_scale(RN_MAX, NORMALIZE: tl.constexpr, SCALE_G: tl.constexpr):
    """The fp16 G scale (1 otherwise): G_SCALE / max_j r_j, so that G r_j c <= G_SCALE."""
    if SCALE_G:
        if NORMALIZE:
            return _G_SCALE / tl.load(RN_MAX)
        else:
            return _G_SCALE
    else:
        return 1.0


@triton.jit
def _nt_xent_bwd_epilogue(acc, ps, Z, RN, TAU, GRAD, DZ, RAD, row0, rows, row_mask, d, offs_m, c_scale, M, D,
                          self_offset, NORMALIZE: tl.constexpr, NEED_PS: tl.constexpr):
    # fp32 epilogue: undo the G scale, the mean and 1/tau, then normalization's backward
    # dz_i = r_i (g_i - <g_i, u_i> u_i) with the exact input row.
    dmask = row_mask[:, None] & (d < D)[None, :]
    gu = acc * (tl.load(GRAD) / (c_scale * M * tl.load(TAU)))
    # the rows again from memory (L2): keeping zi live for the epilogue would hold it in a second
    # register layout through the loop (sm80: spills)
    zf = tl.load(Z + tl.cast(row0 + self_offset, tl.int64) * D + offs_m, mask=dmask, other=0.0).to(tl.float32)
    if NORMALIZE:
        ri = tl.load(RN + self_offset + rows, mask=row_mask, other=0.0)
        rad = tl.sum(gu * zf, 1) * ri
        dz = (gu - (rad * ri)[:, None] * zf) * ri[:, None]
    else:
        rad = tl.sum(gu * zf, 1)
        dz = gu
    tl.store(DZ + rows.to(tl.int64)[:, None] * D + d[None, :], dz.to(DZ.dtype.element_ty), mask=dmask)
    if NEED_PS:  # RAD holds sum_j P_ij s_ij (natural logits) instead
        tl.store(RAD + rows, ps * _LN2, mask=row_mask)
    else:
        tl.store(RAD + rows, rad, mask=row_mask)


@triton.jit
def _nt_xent_bwd_kernel(
    Z,  # *T [NK, D] contiguous raw rows: [z1; z2] (single process), every rank's [z1_r; z2_r] (gathered)
    RN,  # *fp32 [NK] inverse norms (NORMALIZE)
    RN_MAX,  # *fp32 [1] max of RN (NORMALIZE and SCALE_G)
    LSE,  # *fp32 [NK] every row's lse from the forward(s)
    WCOL,  # *fp32 [NK] (WEIGHTED) row j's weight: its rank's upstream gradient / GRAD
    TAU,  # *fp32 [1] temperature
    GRAD,  # *fp32 [1] upstream gradient of the mean loss (WEIGHTED: the max |gradient| over ranks)
    DZ,  # *T [M, D] out: dLoss/dZ of the program's rows (not SPLIT_K)
    RAD,  # *fp32 [M] out: <dLoss/du_i, u_i> (for dL/dtau), NEED_PS: sum_j P_ij s_ij (not SPLIT_K)
    PACC,  # *fp32 [splits, M, D] out (SPLIT_K): the split's partial sum_j G_ij r_j z_j
    PPS,  # *fp32 [splits, M] out (SPLIT_K and NEED_PS): the split's partial sum_j P_ij s_ij (base 2)
    M,  # rows whose gradient is computed: Z[self_offset : self_offset + M] (2N, or 2n local rows)
    NK,  # all rows (keys)
    HALF,  # M / 2: the positive of local row i is self_offset + (i + HALF) mod M
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # Z index of local row 0 (0, or rank * 2n when gathered)
    key_chunk,  # keys per split (a multiple of BLOCK_N; >= NK when unsplit)
    NORMALIZE: tl.constexpr,  # cosine similarity: scale by RN, normalization backward in the epilogue
    SCALE_G: tl.constexpr,  # fp16: scale G by G_SCALE / max r before the cast
    WEIGHTED: tl.constexpr,  # gathered: per-row upstream weights WCOL
    NEED_PS: tl.constexpr,  # also sum_j P_ij s_ij per row (gathered loss with a learnable temperature)
    SPLIT_K: tl.constexpr,  # write partial sums to PACC (combined by _nt_xent_bwd_combine_kernel)
    EVEN_D: tl.constexpr,  # D == BLOCK_D
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    IN_DTYPE: tl.constexpr,  # tl dtype of Z (the second dot's operand dtype)
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for fp32 inputs
    BLOCK_M: tl.constexpr,  # rows of dZ per program
    BLOCK_N: tl.constexpr,  # columns per step
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # Symmetric loss: dL/du_i = sum_j G_ij u_j / (M tau) with G_ij = P_ij + P_ji - 2[j = pos(i)] and
    # P_ij = exp(S_ij/tau - lse_i); S is symmetric so P_ji = exp(S_ij/tau - lse_j): one pass per row
    # block, the column side only needs lse_j. Gathered (rank r, M = 2n local rows of NK = 2nW): the sum
    # of the ranks' local losses L_r' (each a mean over 2n rows) has the same form with every rank's lse
    # (all-gathered after the forward) and each P weighted by its row's rank's upstream gradient.
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    grow0 = row0 + self_offset  # global index of the block's first row
    d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    offs_n = tl.arange(0, BLOCK_N)[:, None] * D + d[None, :]
    zi = _load_tile(Z + tl.cast(grow0, tl.int64) * D, offs_m, M - row0, d, D, True, EVEN_D, UPCAST)
    lse_i = tl.load(LSE + self_offset + rows, mask=row_mask, other=0.0) * _LOG2E
    a_i = _row_scale(RN + self_offset, TAU, rows, row_mask, NORMALIZE, BLOCK_M)
    c_scale = _g_scale(RN_MAX, NORMALIZE, SCALE_G)
    if WEIGHTED:
        w_row = tl.load(WCOL + self_offset)  # every local row belongs to this rank
    else:
        w_row = 1.0

    # positives of this row block (global indices): [row0 + HALF, min(row0 + BLOCK_M, HALF) + HALF) for
    # rows < HALF, [max(row0, HALF) - HALF, row0 + BLOCK_M - HALF) for rows >= HALF (a block may straddle
    # HALF), each shifted by self_offset
    self_col = rows + self_offset
    pos = tl.where(rows < HALF, rows + HALF, rows - HALF) + self_offset
    pa_lo = grow0 + HALF
    pa_hi = tl.minimum(row0 + BLOCK_M, HALF) + HALF + self_offset
    pb_lo = tl.maximum(row0, HALF) - HALF + self_offset
    pb_hi = grow0 + BLOCK_M - HALF
    k_lo = tl.program_id(1) * key_chunk  # this program's key range [k_lo, k_hi) (split-K)
    k_hi = tl.minimum(k_lo + key_chunk, NK)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ps = tl.zeros([BLOCK_M], tl.float32)
    for start in range(k_lo, k_hi, BLOCK_N):
        special = ((start + BLOCK_N > NK) | _hits(start, grow0, grow0 + BLOCK_M, BLOCK_N)
                   | _hits(start, pa_lo, pa_hi, BLOCK_N) | _hits(start, pb_lo, pb_hi, BLOCK_N))
        acc, ps = _nt_xent_bwd_tile(acc, ps, zi, Z, RN, LSE, WCOL, start, offs_n, d, a_i, lse_i, self_col, pos,
                                    w_row, special, c_scale, NK, D, NORMALIZE, SCALE_G, WEIGHTED, NEED_PS, EVEN_D,
                                    UPCAST, IN_DTYPE, DOT_PRECISION, BLOCK_N)
    if SPLIT_K:
        dmask = row_mask[:, None] & (d < D)[None, :]
        part = tl.program_id(1).to(tl.int64) * M + rows.to(tl.int64)
        tl.store(PACC + part[:, None] * D + d[None, :], acc, mask=dmask)
        if NEED_PS:
            tl.store(PPS + part, ps, mask=row_mask)
    else:
        _nt_xent_bwd_epilogue(acc, ps, Z, RN, TAU, GRAD, DZ, RAD, row0, rows, row_mask, d, offs_m, c_scale, M, D,
                              self_offset, NORMALIZE, NEED_PS)


@triton.jit
def _nt_xent_bwd_combine_kernel(
    Z, RN, RN_MAX, TAU, GRAD, DZ, RAD,  # as in _nt_xent_bwd_kernel
    PACC,  # *fp32 [splits, M, D] partial sums
    PPS,  # *fp32 [splits, M] partial sum_j P_ij s_ij (NEED_PS)
    M, D, self_offset,  # as in _nt_xent_bwd_kernel
    n_split,  # number of key splits
    NORMALIZE: tl.constexpr, SCALE_G: tl.constexpr, NEED_PS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # split-K combine: the partial sums added in split order (deterministic), then the epilogue
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    dmask = row_mask[:, None] & (d < D)[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    ps = tl.zeros([BLOCK_M], tl.float32)
    for s in range(0, n_split):
        part = tl.cast(s, tl.int64) * M + rows.to(tl.int64)
        acc += tl.load(PACC + part[:, None] * D + d[None, :], mask=dmask, other=0.0)
        if NEED_PS:
            ps += tl.load(PPS + part, mask=row_mask, other=0.0)
    _nt_xent_bwd_epilogue(acc, ps, Z, RN, TAU, GRAD, DZ, RAD, row0, rows, row_mask, d, offs_m,
                          _g_scale(RN_MAX, NORMALIZE, SCALE_G), M, D, self_offset, NORMALIZE, NEED_PS)


# ---------------------------------------------------------------------------------------------------
# backward: general InfoNCE (queries against keys), dq and dk


@triton.jit
def _dq_tile(acc, q, K, RNK, start, offs_n, d, a_i, lse_i, self_col, pos, special, c_scale, NK, D,
             EXCLUDE_SELF: tl.constexpr, NORMALIZE: tl.constexpr, SCALE_G: tl.constexpr,
             EVEN_D: tl.constexpr, UPCAST: tl.constexpr, IN_DTYPE: tl.constexpr,
             DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    cmask = cols < NK
    k = _load_tile(K + tl.cast(start, tl.int64) * D, offs_n, NK - start, d, D, True, EVEN_D, UPCAST)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
    if NORMALIZE:
        rk = tl.load(RNK + cols, mask=cmask, other=0.0)
        s = s * rk[None, :]
    g = tl.exp2(s * a_i[:, None] - lse_i[:, None])  # P_ij
    if special:  # tiles holding self keys, positives or the tail
        valid = cmask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[None, :] != self_col[:, None])
        g = tl.where(valid, g, 0.0) - tl.where(cols[None, :] == pos[:, None], 1.0, 0.0)
    if NORMALIZE:
        g = g * (rk * c_scale)[None, :]
    elif SCALE_G:
        g = g * c_scale
    return acc + tl.dot(_to_dot(g, IN_DTYPE, UPCAST), k, input_precision=DOT_PRECISION)


@triton.jit
def _info_nce_bwd_dq_kernel(
    Q,  # *T [M, D] raw queries
    K,  # *T [Nk, D] raw keys
    RNQ,  # *fp32 [M] inverse query norms (NORMALIZE)
    RNK,  # *fp32 [Nk] inverse key norms (NORMALIZE)
    RNK_MAX,  # *fp32 [1] max of RNK (NORMALIZE and SCALE_G)
    POS,  # *int64 [M] positives
    LSE,  # *fp32 [M] from the forward
    TAU,  # *fp32 [1] temperature
    GRAD,  # *fp32 [1] upstream gradient of the mean loss
    DQ,  # *T [M, D] out: dLoss/dQ
    RAD,  # *fp32 [M] out: <dLoss/du_i, u_i> (for dL/dtau)
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    EXCLUDE_SELF: tl.constexpr,  # as in the forward
    NORMALIZE: tl.constexpr,  # cosine similarity
    SCALE_G: tl.constexpr,  # fp16 G scaling
    EVEN_D: tl.constexpr,  # D == BLOCK_D
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    IN_DTYPE: tl.constexpr,  # tl dtype of Q and K
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for fp32 inputs
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per step
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # dL/du_i = (sum_j P_ij v_j - v_pos(i)) / (M tau), u = normalized queries, v = normalized keys
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    offs_n = tl.arange(0, BLOCK_N)[:, None] * D + d[None, :]
    q = _load_tile(Q + tl.cast(row0, tl.int64) * D, offs_m, M - row0, d, D, True, EVEN_D, UPCAST)
    lse_i = tl.load(LSE + rows, mask=row_mask, other=0.0) * _LOG2E
    a_i = _row_scale(RNQ, TAU, rows, row_mask, NORMALIZE, BLOCK_M)
    c_scale = _g_scale(RNK_MAX, NORMALIZE, SCALE_G)
    self_col = rows + self_offset

    pos = tl.load(POS + rows, mask=row_mask, other=-1)
    # tiles holding this block's self keys [first, first + BLOCK_M) or positives [p_lo, p_hi]
    first = row0 + self_offset
    p_lo = tl.min(tl.where(row_mask, pos, NK), 0)
    p_hi = tl.max(tl.where(row_mask, pos, -1), 0) + 1
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, NK, BLOCK_N):
        special = (start + BLOCK_N > NK) | _hits(start, p_lo, p_hi, BLOCK_N)
        if EXCLUDE_SELF:
            special = special | _hits(start, first, first + BLOCK_M, BLOCK_N)
        acc = _dq_tile(acc, q, K, RNK, start, offs_n, d, a_i, lse_i, self_col, pos, special, c_scale, NK, D,
                       EXCLUDE_SELF, NORMALIZE, SCALE_G, EVEN_D, UPCAST, IN_DTYPE, DOT_PRECISION, BLOCK_N)
    # the same fp32 epilogue as NT-Xent's, on the queries (offset 0, no sum_j P_ij s_ij)
    _nt_xent_bwd_epilogue(acc, 0.0, Q, RNQ, TAU, GRAD, DQ, RAD, row0, rows, row_mask, d, offs_m, c_scale, M, D,
                          0, NORMALIZE, False)


@triton.jit
def _info_nce_bwd_dk_kernel(
    Q,  # *T [M, D] raw queries
    K,  # *T [Nk, D] raw keys
    RNQ,  # *fp32 [M] inverse query norms (NORMALIZE)
    RNK,  # *fp32 [Nk] inverse key norms (NORMALIZE)
    RNQ_MAX,  # *fp32 [1] max of RNQ (NORMALIZE and SCALE_G)
    POS,  # *int64 [M] positives
    LSE,  # *fp32 [M] from the forward
    TAU,  # *fp32 [1] temperature
    GRAD,  # *fp32 [1] upstream gradient of the mean loss
    DK,  # *T [Nk, D] out: dLoss/dK
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    EXCLUDE_SELF: tl.constexpr,  # as in the forward
    NORMALIZE: tl.constexpr,  # cosine similarity
    SCALE_G: tl.constexpr,  # fp16 G scaling
    EVEN_D: tl.constexpr,  # D == BLOCK_D
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    IN_DTYPE: tl.constexpr,  # tl dtype of Q and K
    DOT_PRECISION: tl.constexpr,  # "tf32x3" for fp32 inputs
    BLOCK_M: tl.constexpr,  # query rows per step
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # dL/dv_j = sum_i (P_ij - [j = pos(i)]) u_i / (M tau); each program owns a block of keys and
    # streams over the queries (the transposed tile), so no atomics. The positives are arbitrary
    # (a scatter), so this loop keeps its masks: it runs only for the general / gathered case.
    pid = tl.program_id(0)
    col0 = pid * BLOCK_N
    cols = col0 + tl.arange(0, BLOCK_N)
    col_mask = cols < NK
    d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)[:, None] * D + d[None, :]
    offs_m = tl.arange(0, BLOCK_M)[:, None] * D + d[None, :]
    k = _load_tile(K + tl.cast(col0, tl.int64) * D, offs_n, NK - col0, d, D, True, EVEN_D, UPCAST)
    tau = tl.load(TAU)
    if NORMALIZE:
        rk = tl.load(RNK + cols, mask=col_mask, other=0.0)
        b_j = rk * (_LOG2E / tau)
    else:
        b_j = tl.zeros([BLOCK_N], tl.float32) + _LOG2E / tau
    c_scale = _g_scale(RNQ_MAX, NORMALIZE, SCALE_G)

    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, M, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        q = _load_tile(Q + tl.cast(start, tl.int64) * D, offs_m, M - start, d, D, True, EVEN_D, UPCAST)
        lse_i = tl.load(LSE + rows, mask=row_mask, other=0.0) * _LOG2E
        pos = tl.load(POS + rows, mask=row_mask, other=-1)
        s = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        if NORMALIZE:
            rq = tl.load(RNQ + rows, mask=row_mask, other=0.0)
            s = s * rq[None, :]
        valid = row_mask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[:, None] != (rows + self_offset)[None, :])
        g = tl.where(valid, tl.exp2(s * b_j[:, None] - lse_i[None, :]), 0.0)
        g = g - tl.where(cols[:, None] == pos[None, :], 1.0, 0.0)
        if NORMALIZE:
            g = g * (rq * c_scale)[None, :]
        elif SCALE_G:
            g = g * c_scale
        acc += tl.dot(_to_dot(g, IN_DTYPE, UPCAST), q, input_precision=DOT_PRECISION)

    gv = acc * (tl.load(GRAD) / (c_scale * M * tau))
    dmask = col_mask[:, None] & (d < D)[None, :]
    if NORMALIZE:
        kf = tl.load(K + tl.cast(col0, tl.int64) * D + offs_n, mask=dmask, other=0.0).to(tl.float32)  # from L2
        rad = tl.sum(gv * kf, 1) * rk
        dk = (gv - (rad * rk)[:, None] * kf) * rk[:, None]
    else:
        dk = gv
    tl.store(DK + cols.to(tl.int64)[:, None] * D + d[None, :], dk.to(DK.dtype.element_ty), mask=dmask)
