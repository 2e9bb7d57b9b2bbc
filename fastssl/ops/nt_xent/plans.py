"""Triton launch plans of nt_xent / info_nce: per-architecture configs, split-K, and for each kernel
launch a (kernel, grid, args, kwargs) tuple. Plans are built without launching (launch.py runs them), so
that the ahead-of-time compile test (tests/ops/test_nt_xent_aot.py) specializes exactly what a launch
passes.

Split-K: when the row blocks are fewer than the device's SMs (small batches), the key range is split
across a second grid axis and the partial (max, sum-exp) / gradient sums are combined in split order by
a small kernel (no atomics: still bitwise reproducible on a given device); see ``key_splits``.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor

try:  # triton is optional at import time (CPU-only installs use the blockwise path)
    import triton
    import triton.language as tl

    from fastssl.kernels import nt_xent as K
except ImportError:  # pragma: no cover
    triton = tl = K = None

# Triton path keeps whole embedding rows in registers: D up to 512 (wider goes blockwise); fp32 (tf32x3
# dots) up to 128.
MAX_TRITON_D = 512
MAX_TRITON_D_FP32 = 128

# Triton configs: per architecture, checked by tests/ops/test_nt_xent_aot.py (ahead-of-time compiles
# of the real launch specialization for sm80/86/89/90: no local memory, shared memory within the
# per-block limit of each arch).

# per-block shared memory limits (bytes): sm80 (A100) 163 KB, sm86/sm89 (RTX 30/40, A10, L4, L40S)
# 99 KB, sm90 (H100/H200) 227 KB
SMEM_LIMIT = {(8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448}

# (kind, bytes per element, BLOCK_D) -> (BLOCK_M, BLOCK_N, num_warps, num_stages) on sm80/sm90;
# small-smem parts (sm86/sm89) use _SMALL_SMEM where listed. kind: "fwd" (one dot per tile) or "bwd"
# (two dots and a [BLOCK_M, BLOCK_D] fp32 accumulator). Found by ahead-of-time compiles (the first
# candidate, largest tiles first, with no spills on every arch of its group; tests/ops/test_nt_xent_aot.py
# re-checks them). fp32 inputs run tf32x3 dots, whose operand splits take registers: small tiles, and
# D <= MAX_TRITON_D_FP32 (the backward spills at BLOCK_D 256 even with 16 x 16 tiles). The fp32 BLOCK_D 128
# backward needs 8 warps: with 4 it hit the 255-register cap and spilled (triton 3.8: sm90 without
# normalization, 8-32 B; triton 3.6, the GPU machine's: also info_nce dq on sm80 and dk on sm86/89, up to 40 B);
# 32 x 32 tiles spill at 8 warps too (up to 344 B).
_CONFIGS = {
    ("fwd", 2, 16): (128, 64, 4, 3), ("fwd", 2, 32): (128, 64, 4, 3), ("fwd", 2, 64): (128, 64, 4, 3),
    ("fwd", 2, 128): (128, 64, 8, 3), ("fwd", 2, 256): (128, 64, 8, 2), ("fwd", 2, 512): (64, 64, 8, 2),
    ("bwd", 2, 16): (64, 64, 4, 2), ("bwd", 2, 32): (64, 64, 4, 2), ("bwd", 2, 64): (64, 64, 4, 2),
    ("bwd", 2, 128): (64, 64, 4, 2), ("bwd", 2, 256): (64, 64, 8, 2), ("bwd", 2, 512): (32, 32, 8, 1),
    ("fwd", 4, 16): (64, 32, 4, 2), ("fwd", 4, 32): (64, 32, 4, 2), ("fwd", 4, 64): (64, 32, 4, 2),
    ("fwd", 4, 128): (16, 32, 4, 2),
    ("bwd", 4, 16): (32, 32, 4, 2), ("bwd", 4, 32): (32, 32, 4, 2), ("bwd", 4, 64): (32, 32, 4, 2),
    ("bwd", 4, 128): (16, 16, 8, 2),  # 8 warps: with 4, the fp32 backward spilled (triton 3.6 and 3.8)
}
_SMALL_SMEM = {
    ("fwd", 2, 512): (32, 32, 4, 2), ("bwd", 2, 512): (32, 32, 8, 1),
    ("fwd", 4, 16): (32, 32, 4, 2), ("fwd", 4, 32): (32, 32, 4, 2), ("fwd", 4, 64): (32, 32, 4, 2),
    ("bwd", 4, 128): (16, 32, 8, 2),
}


def block_d_for(d: int) -> int:
    return max(16, 1 << (d - 1).bit_length())


def triton_config(kind: str, dtype: torch.dtype, d: int, arch: tuple[int, int] | None) -> dict:
    """Launch config of kernel ``kind`` for inputs of ``dtype`` and width ``d`` on compute capability
    ``arch`` (None: the interpreter: small tiles so tiny test shapes still span several blocks, BLOCK_M != BLOCK_N
    as on the GPU)."""
    block_d = block_d_for(d)
    if arch is None:
        return dict(BLOCK_M=32, BLOCK_N=16, BLOCK_D=block_d, num_warps=1, num_stages=1, UPCAST=True)
    key = (kind, 4 if dtype == torch.float32 else 2, block_d)
    small = SMEM_LIMIT.get(tuple(arch), 101376) < 160 * 1024
    bm, bn, warps, stages = (_SMALL_SMEM.get(key) if small else None) or _CONFIGS[key]
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=warps, num_stages=stages, UPCAST=False)


@cache
def _device_arch(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def arch_of(x: Tensor) -> tuple[int, int] | None:
    """Compute capability of x's device; None for CPU tensors (the interpreter)."""
    return _device_arch(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.is_cuda else None


def _dot_precision(dtype: torch.dtype) -> str:
    return "tf32x3" if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def _tl_dtype(dtype: torch.dtype):
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[dtype]


def _common(x: Tensor, cfg: dict, d: int) -> dict:
    return dict(EVEN_D=d == cfg["BLOCK_D"], DOT_PRECISION=_dot_precision(x.dtype), **cfg)


# Launch plans: (kernel, grid, args, kwargs). Built without launching, so that the ahead-of-time
# compile test specializes exactly what a launch passes.


def rnorm_plan(x: Tensor, rn: Tensor, arch) -> list:
    r, d = x.shape
    block_r = 16 if arch is None else 64  # memory-bound: 64 rows x 128 columns per step, 4 warps
    return [(K._row_rnorm_kernel, (triton.cdiv(r, block_r),), (x, rn, r, d),
             dict(BLOCK_R=block_r, BLOCK_D=min(block_d_for(d), 128), num_warps=1 if arch is None else 4))]


# Split-K (small batches): when the row blocks are fewer than the device's SMs, the key range is split
# across a second grid axis; each split writes partial (max, sum-exp) rows (forward) or partial
# gradient sums (backward) to a buffer and a small combine kernel adds them in split order: no atomics,
# so the same inputs on the same device give the same bits. The split count comes from the device's SM
# count; the Triton interpreter (tests) pretends to have INTERPRETER_SMS so that small shapes split.
SPLIT_K: int | None = None  # None: automatic; an int forces the number of splits (tests, benches)
MAX_SPLIT = 8  # at most this many key splits
MIN_SPLIT_TILES = 4  # on a GPU every split walks at least this many key tiles (amortizes its partial write)
INTERPRETER_SMS = 4


@cache
def _device_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sms(x: Tensor, arch, sms: int | None) -> int:
    """Streaming multiprocessors to fill: the device's count (the interpreter's pretend count; 1 for a
    plan built from CPU tensors for a real arch, i.e. the ahead-of-time compile test, unless given)."""
    if sms is not None:
        return sms
    if arch is None:
        return INTERPRETER_SMS
    return _device_sms(x.device.index if x.device.index is not None else torch.cuda.current_device()) \
        if x.is_cuda else 1


def key_splits(row_blocks: int, nk: int, block_n: int, sms: int, interpreter: bool) -> tuple[int, int]:
    """(number of key splits, keys per split): split when ``row_blocks`` programs leave SMs idle, so that
    about ``sms`` programs run; each split a whole number of BLOCK_N tiles. ``SPLIT_K`` overrides."""
    tiles = triton.cdiv(max(nk, 1), block_n)
    if SPLIT_K is not None:
        want = SPLIT_K
    elif row_blocks >= sms:
        want = 1
    else:
        want = min(MAX_SPLIT, triton.cdiv(sms, row_blocks), max(1, tiles // (1 if interpreter else MIN_SPLIT_TILES)))
    chunk_tiles = triton.cdiv(tiles, max(1, min(want, tiles)))
    return triton.cdiv(tiles, chunk_tiles), chunk_tiles * block_n


def fwd_plan(q, k, rnq, rnk, pos, tau, lse, loss, *, self_offset, exclude_self, pos_half, normalize, arch, sms=None):
    m, d = q.shape
    nk = k.shape[0]
    cfg = triton_config("fwd", q.dtype, d, arch)
    flags = dict(EXCLUDE_SELF=exclude_self, POS_HALF=pos_half, NORMALIZE=normalize)
    kw = dict(**flags, **_common(q, cfg, d))
    row_blocks = triton.cdiv(m, cfg["BLOCK_M"])
    n_split, chunk = key_splits(row_blocks, nk, cfg["BLOCK_N"], _sms(q, arch, sms), arch is None)
    if n_split == 1:
        args = (q, k, rnq, rnk, pos, tau, lse, loss, lse, loss, m, nk, d, self_offset, m // 2, chunk)
        return [(K._info_nce_fwd_kernel, (row_blocks, 1), args, dict(kw, SPLIT_K=False))]
    pm = torch.empty(n_split, m, dtype=torch.float32, device=q.device)
    pl = torch.empty(n_split, m, dtype=torch.float32, device=q.device)
    args = (q, k, rnq, rnk, pos, tau, lse, loss, pm, pl, m, nk, d, self_offset, m // 2, chunk)
    combine = (q, k, rnq, rnk, pos, tau, lse, loss, pm, pl, m, nk, d, self_offset, m // 2, n_split)
    return [(K._info_nce_fwd_kernel, (row_blocks, n_split), args, dict(kw, SPLIT_K=True)),
            (K._info_nce_fwd_combine_kernel, (row_blocks,), combine,
             dict(**flags, BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"]))]


def nt_xent_bwd_plan(z, rn, rn_max, lse, tau, grad, dz, rad, *, normalize, arch, m=None, self_offset=0, wcol=None,
                     need_ps=False, sms=None):
    """Symmetric backward for rows z[self_offset : self_offset + m] (default: all) against every row of z;
    ``wcol`` (gathered): per-row weights, ``grad`` then holds their scale (see launch.triton_nt_xent_gathered_bwd);
    ``need_ps``: ``rad`` receives sum_j P_ij s_ij instead of the radial terms."""
    nk, d = z.shape
    m = nk if m is None else m
    cfg = triton_config("bwd", z.dtype, d, arch)
    flags = dict(NORMALIZE=normalize, SCALE_G=z.dtype == torch.float16)
    kw = dict(**flags, WEIGHTED=wcol is not None, NEED_PS=need_ps, IN_DTYPE=_tl_dtype(z.dtype), **_common(z, cfg, d))
    row_blocks = triton.cdiv(m, cfg["BLOCK_M"])
    n_split, chunk = key_splits(row_blocks, nk, cfg["BLOCK_N"], _sms(z, arch, sms), arch is None)
    w = rn if wcol is None else wcol
    if n_split == 1:
        args = (z, rn, rn_max, lse, w, tau, grad, dz, rad, dz, rad, m, nk, m // 2, d, self_offset, chunk)
        return [(K._nt_xent_bwd_kernel, (row_blocks, 1), args, dict(kw, SPLIT_K=False))]
    pacc = torch.empty(n_split, m, d, dtype=torch.float32, device=z.device)
    pps = torch.empty(n_split, m, dtype=torch.float32, device=z.device) if need_ps else rad
    args = (z, rn, rn_max, lse, w, tau, grad, dz, rad, pacc, pps, m, nk, m // 2, d, self_offset, chunk)
    combine = (z, rn, rn_max, tau, grad, dz, rad, pacc, pps, m, d, self_offset, n_split)
    return [(K._nt_xent_bwd_kernel, (row_blocks, n_split), args, dict(kw, SPLIT_K=True)),
            (K._nt_xent_bwd_combine_kernel, (row_blocks,), combine,
             dict(**flags, NEED_PS=need_ps, BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"],
                  num_warps=cfg["num_warps"]))]


def info_nce_bwd_plan(q, k, rnq, rnk, rnq_max, rnk_max, pos, lse, tau, grad, dq, dk, rad, *, self_offset,
                      exclude_self, normalize, arch):
    m, d = q.shape
    nk = k.shape[0]
    cfg = triton_config("bwd", q.dtype, d, arch)
    kw = dict(EXCLUDE_SELF=exclude_self, NORMALIZE=normalize, SCALE_G=q.dtype == torch.float16,
              IN_DTYPE=_tl_dtype(q.dtype), **_common(q, cfg, d))
    plan = []
    if dq is not None:
        plan.append((K._info_nce_bwd_dq_kernel, (triton.cdiv(m, cfg["BLOCK_M"]),),
                     (q, k, rnq, rnk, rnk_max, pos, lse, tau, grad, dq, rad, m, nk, d, self_offset), kw))
    if dk is not None:
        plan.append((K._info_nce_bwd_dk_kernel, (triton.cdiv(nk, cfg["BLOCK_N"]),),
                     (q, k, rnq, rnk, rnq_max, pos, lse, tau, grad, dk, m, nk, d, self_offset), kw))
    return plan

