"""Triton device code for NT-Xent / InfoNCE (launchers and autograd live in fastssl/ops/nt_xent.py).

Notation: queries Q [M, D], keys K [Nk, D] (already L2-normalized by the caller when asked),
raw similarity S_ij = <q_i, k_j>, logits S_ij / tau. Row i's candidates are every key j except,
with EXCLUDE_SELF, the key j == i + self_offset (its own copy in the key set). The positive of row i
is the key pos[i]. Per-row loss: lse_i - S_{i,pos(i)} / tau.

Every kernel streams over blocks of the other side (flash-attention style) and never materializes
the [M, Nk] matrix: the forward keeps an online (max, sum) in base 2 and writes lse_i (natural log,
in logit units; the launcher adds the positive's logit); the backwards recompute the similarity tiles from Q, K, lse.
No atomics: each program owns its output rows, so results are bitwise reproducible.

Interpreter (TRITON_INTERPRET=1): UPCAST loads 16-bit inputs as fp32 (the numpy interpreter has no
bf16 arithmetic). On a GPU, 16-bit tiles go to tl.dot as they are (fp32 accumulation).
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * LOG2E) (host float, for the launchers)
LN2 = 0.6931471805599453  # ln(2): back from base-2 to natural log
# Compiled kernels may only read constexpr globals.
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)
_NEG_BIG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: exp2(-inf - it) = 0, no NaN


@triton.jit
def _load_rows(ptr, rows, row_mask, d, d_mask, D, UPCAST: tl.constexpr):
    """Rows ``rows`` of a row-major [*, D] matrix, zeros outside the masks; fp32 when UPCAST."""
    x = tl.load(ptr + rows[:, None] * D + d[None, :], mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _info_nce_fwd_kernel(
    Q,  # *T [M, D] contiguous queries
    K,  # *T [Nk, D] contiguous keys
    LSE,  # *fp32 [M] out: logsumexp over the candidates of row i, natural log, logit units
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    qk_scale,  # log2(e) / tau: raw dot -> base-2 logits
    EXCLUDE_SELF: tl.constexpr,  # drop key i + self_offset from row i's candidates
    UPCAST: tl.constexpr,  # load as fp32 (interpreter: no bf16 arithmetic)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32/fp64 inputs (no silent tf32), "tf32" otherwise
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per step of the stream
    BLOCK_D: tl.constexpr,  # next power of two >= D (whole rows stay in registers)
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    q = _load_rows(Q, rows, row_mask, d, d_mask, D, UPCAST)
    self_col = rows + self_offset

    # The positive's logit is an O(M*D) row dot done by the launcher: picking it out of every tile
    # would cost three more ALU ops per similarity in a loop that is ALU/exp-bound.
    m_i = tl.full([BLOCK_M], _NEG_BIG, tl.float32)  # running max of base-2 logits
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2(logit - m_i)
    for start in range(0, NK, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < NK
        k = _load_rows(K, cols, col_mask, d, d_mask, D, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # fp32 [BLOCK_M, BLOCK_N]
        valid = col_mask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[None, :] != self_col[:, None])
        s2 = tl.where(valid, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s2 - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    lse = (m_i + tl.log2(l_i)) * _LN2
    tl.store(LSE + rows, lse, mask=row_mask)


@triton.jit
def _nt_xent_bwd_kernel(
    Z,  # *T [R, D] contiguous, R = 2N: [z1; z2] (normalized); queries and keys at once
    LSE,  # *fp32 [R] from the forward
    DZ,  # *fp32 [R, D] out: dLoss/dZ for a unit upstream gradient
    R,  # 2N rows
    HALF,  # N: the positive of row i is (i + N) mod 2N
    D,  # embedding width (<= BLOCK_D)
    qk_scale,  # log2(e) / tau
    grad_scale,  # 1 / (2N * tau): the mean's 1/2N and the logits' 1/tau
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32/fp64 inputs
    BLOCK_M: tl.constexpr,  # rows of dZ per program
    BLOCK_N: tl.constexpr,  # columns per step
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # Symmetric loss: dL/dZ_i = sum_j G_ij Z_j / tau with G_ij = (P_ij + P_ji - 2[j = pos(i)]) / 2N and
    # P_ij = exp(S_ij/tau - lse_i); S is symmetric so P_ji = exp(S_ij/tau - lse_j): one pass per row
    # block, the column side only needs lse_j. No atomics.
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < R
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    zi = _load_rows(Z, rows, row_mask, d, d_mask, D, UPCAST)
    lse_i = tl.load(LSE + rows, mask=row_mask, other=0.0) * _LOG2E
    pos = tl.where(rows < HALF, rows + HALF, rows - HALF)

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, R, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < R
        zj = _load_rows(Z, cols, col_mask, d, d_mask, D, UPCAST)
        lse_j = tl.load(LSE + cols, mask=col_mask, other=0.0) * _LOG2E
        s2 = tl.dot(zi, tl.trans(zj), input_precision=DOT_PRECISION) * qk_scale
        valid = col_mask[None, :] & (cols[None, :] != rows[:, None])
        s2 = tl.where(valid, s2, float("-inf"))  # before exp2: the excluded self term could overflow
        g = tl.exp2(s2 - lse_i[:, None]) + tl.exp2(s2 - lse_j[None, :])
        g = g - tl.where(cols[None, :] == pos[:, None], 2.0, 0.0)
        acc += tl.dot(g.to(zj.dtype), zj, input_precision=DOT_PRECISION)
    acc = acc * grad_scale
    tl.store(DZ + rows[:, None] * D + d[None, :], acc, mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _info_nce_bwd_dq_kernel(
    Q,  # *T [M, D] queries
    K,  # *T [Nk, D] keys
    POS,  # *int64 [M] positives
    LSE,  # *fp32 [M] from the forward
    DQ,  # *fp32 [M, D] out: dLoss/dQ for a unit upstream gradient
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    qk_scale,  # log2(e) / tau
    grad_scale,  # 1 / (M * tau)
    EXCLUDE_SELF: tl.constexpr,  # as in the forward
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32/fp64 inputs
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per step
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # dL/dq_i = sum_j (P_ij - [j = pos(i)]) k_j / (M tau)
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < M
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    q = _load_rows(Q, rows, row_mask, d, d_mask, D, UPCAST)
    lse_i = tl.load(LSE + rows, mask=row_mask, other=0.0) * _LOG2E
    pos = tl.load(POS + rows, mask=row_mask, other=-1)
    self_col = rows + self_offset

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, NK, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
        col_mask = cols < NK
        k = _load_rows(K, cols, col_mask, d, d_mask, D, UPCAST)
        s2 = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        valid = col_mask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[None, :] != self_col[:, None])
        g = tl.exp2(tl.where(valid, s2, float("-inf")) - lse_i[:, None])
        g = g - tl.where(cols[None, :] == pos[:, None], 1.0, 0.0)
        acc += tl.dot(g.to(k.dtype), k, input_precision=DOT_PRECISION)
    acc = acc * grad_scale
    tl.store(DQ + rows[:, None] * D + d[None, :], acc, mask=row_mask[:, None] & d_mask[None, :])


@triton.jit
def _info_nce_bwd_dk_kernel(
    Q,  # *T [M, D] queries
    K,  # *T [Nk, D] keys
    POS,  # *int64 [M] positives
    LSE,  # *fp32 [M] from the forward
    DK,  # *fp32 [Nk, D] out: dLoss/dK for a unit upstream gradient
    M,  # number of queries
    NK,  # number of keys
    D,  # embedding width (<= BLOCK_D)
    self_offset,  # key index of query 0's own copy (EXCLUDE_SELF only)
    qk_scale,  # log2(e) / tau
    grad_scale,  # 1 / (M * tau)
    EXCLUDE_SELF: tl.constexpr,  # as in the forward
    UPCAST: tl.constexpr,  # load as fp32 (interpreter)
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32/fp64 inputs
    BLOCK_M: tl.constexpr,  # query rows per step
    BLOCK_N: tl.constexpr,  # keys per program
    BLOCK_D: tl.constexpr,  # next power of two >= D
):
    # dL/dk_j = sum_i (P_ij - [j = pos(i)]) q_i / (M tau); each program owns a block of keys and
    # streams over the queries (the transposed tile), so no atomics.
    pid = tl.program_id(0).to(tl.int64)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    col_mask = cols < NK
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    k = _load_rows(K, cols, col_mask, d, d_mask, D, UPCAST)

    acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start in range(0, M, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M).to(tl.int64)
        row_mask = rows < M
        q = _load_rows(Q, rows, row_mask, d, d_mask, D, UPCAST)
        lse_i = tl.load(LSE + rows, mask=row_mask, other=0.0) * _LOG2E
        pos = tl.load(POS + rows, mask=row_mask, other=-1)
        s2t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        valid = row_mask[None, :]
        if EXCLUDE_SELF:
            valid = valid & (cols[:, None] != (rows + self_offset)[None, :])
        g = tl.exp2(tl.where(valid, s2t, float("-inf")) - lse_i[None, :])
        g = g - tl.where(cols[:, None] == pos[None, :], 1.0, 0.0)
        acc += tl.dot(g.to(q.dtype), q, input_precision=DOT_PRECISION)
    acc = acc * grad_scale
    tl.store(DK + cols[:, None] * D + d[None, :], acc, mask=col_mask[:, None] & d_mask[None, :])
