"""NT-Xent (SimCLR) and InfoNCE without the N x N matrix.

``nt_xent(z1, z2, temperature=0.1, normalize=True, gather=False)``: SimCLR's symmetric loss over the
2N views Z = [z1; z2]: for row i the positive is row (i + N) mod 2N, the candidates are every row
j != i, logits are cosine similarity / temperature; the loss is the mean over the 2N rows of
-log softmax(positive). ``info_nce(query, keys, positive_index, ...)`` is the general form (queries
against a key set: CLIP/MoCo); ``nt_xent`` is its case query = keys = Z with ``exclude_self``.

Algorithm: the forward streams over blocks of keys with an online logsumexp (flash-attention style)
and keeps only the per-row logsumexp (O(N) extra); the backward recomputes the similarity tiles.
For the symmetric loss dL/du_i = sum_j G_ij u_j / tau, G_ij = (P_ij + P_ji - 2[j = pos(i)]) / 2N,
P_ij = exp(S_ij / tau - lse_i), one pass per row block without atomics. Normalization is fused: the
raw rows enter the similarity dots and the normalization's backward dz_i = (g_i - <g_i, u_i> u_i) / |z_i|
runs in the kernels' fp32 epilogue. Back ends (``fastssl.ops._backend``):
- CUDA tensors: the Triton kernels of ``fastssl.kernels.nt_xent`` (fp16/bf16 D <= 512, fp32 D <= 128);
- CPU tensors (and CUDA fp64, D > 512, fp32 D > 128): a blockwise PyTorch version of the same algorithm, row
  blocks of at most ``CPU_BLOCK_ELEMS`` similarities against all keys (exact logsumexp per block,
  matmuls), memory O(N*D + CPU_BLOCK_ELEMS);
- ``FASTSSL_BACKEND=ref``: ``*_ref``, the full-matrix spec (O(N^2) memory).

torch.library: the work is done by the ops ``torch.ops.fastssl.{nt_xent,info_nce}_{fwd,bwd}``
(``triton_op`` + ``wrap_triton`` for CUDA, ``register_kernel("cpu")`` for the blockwise path, fake
implementations, ``register_autograd``), so ``torch.compile(fullgraph=True)`` traces through the
public functions (tested: compiled == eager on CPU; on CUDA in the GPU check). The back end is read
from ``FASTSSL_BACKEND`` in the public function at every call; torch.compile guards on that read, so a
change recompiles instead of going stale. Launches run under ``torch.cuda.device(z.device)``.

Numerics contract (what tests/ops/test_nt_xent.py enforces):
- inputs fp16, bf16, fp32 (and fp64, on the blockwise path); z1/z2 (query/keys) same dtype/device;
- similarities, exp/log, the loss and every accumulation in fp32 (fp64 for fp64 inputs). Triton path:
  the raw input rows go to tensor-core dots with fp32 accumulation (16-bit inputs as they are; fp32
  inputs, D <= 128, as tf32x3: three tf32 products, whose split error (3.8e-8 on emulated D=128
  cosines) is below fp32 accumulation's own (2.7e-7); bf16x3 would give 2.1e-6, tf32 1.2e-4), each
  tile is scaled in fp32 by 1/|z_i| 1/|z_j| / tau, and the gradient tiles G are rounded to the input
  dtype for the second dot (fp16: scaled by 2^14 / max_j(1/|z_j|) first, so that P ~ 1/2N never goes
  subnormal); D is zero-padded to a multiple of 16 (exact); normalization's backward in fp32. The blockwise CPU path
  computes in fp32 throughout, also inside a torch.autocast region (autocast is off inside the op);
- returns an fp32 scalar (fp64 for fp64 inputs); gradients in the input dtype;
- error bound: |loss - ref64| and every gradient's max error at most 2x the error of the reference
  computed in the input's own dtype plus ``rtol * max|grad_ref64|`` (tests/helpers.TOL): relative to
  the gradient's scale, so an all-zero gradient fails. The grid includes aligned ("converged")
  positive pairs for every dtype, where the gradient is almost all radial and normalization's
  backward removes that part;
- temperature: a Python number (checked: finite, > 0 -> else ValueError) or a 1-element tensor,
  which may require grad (a learnable temperature): dL/dtau = -(1/(2 tau)) sum_i <dL/du_i, u_i> for
  nt_xent, -(1/tau) sum_i <dL/du_i, u_i> over the queries for info_nce (u = the normalized rows);
  float64 gradcheck. A tensor temperature is not read on the host: tau <= 0 or NaN gives a NaN loss;
- exact for any temperature > 0 (online max, no 1/tau bound assumed; tested down to 0.01);
- NaN anywhere in the inputs -> NaN loss (never a silent number); an out-of-range positive_index ->
  ValueError for CPU tensors in eager mode, NaN loss elsewhere (no host sync); bad shapes, dtypes,
  devices -> ValueError;
- deterministic: no atomics, fixed reduction order: same inputs on the same device -> the same bits
  for the loss and the gradients.

Split-K (Triton): when the row blocks are fewer than the device's SMs (small batches), the key range
is split across a second grid axis and the partial (max, sum-exp) / gradient sums are combined in
split order by a small kernel (no atomics: still bitwise reproducible on a given device); see
``key_splits``.

Distributed (``gather=True`` with an initialized process group of world size W > 1): every rank
scores its local 2n rows [z1_r; z2_r] against all ranks' rows (all-gathered) and returns its LOCAL
contribution: the mean over its own 2n rows of the loss against the global batch of 2nW views. The
forward also all-gathers the per-row lse (2nW floats); the backward then computes each rank's own
rows' complete gradient in one pass over (local rows x all rows) tiles (``_GatheredNtXent``: the
similarity is symmetric, so the keys' side of the gradient is P_ji = exp(s_ij - lse_j)), and only
all-gathers the W upstream gradients: no dk pass and no [2nW, D] reduce-scatter
(``GATHER_BACKWARD = "reduce_scatter"`` selects the previous path, kept for comparison). So
mean_r(loss_r) equals the single-process loss over the global batch, and rank r's gradient is
d(sum_r loss_r)/dz_r = W * dL_global/dz_r: after DDP's gradient averaging (1/W) the parameters
receive exactly the single-process global gradient. Every rank must use the same local batch size
and call backward. Without a process group (or W = 1) gather=True is gather=False.
"""

from __future__ import annotations

import contextlib
import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import custom_op, triton_op, wrap_triton

try:  # triton is optional at import time (CPU-only installs use the blockwise path)
    import triton
    import triton.language as tl

    from fastssl.kernels import nt_xent as K
except ImportError:  # pragma: no cover
    triton = tl = K = None

from fastssl.ops._backend import choose_backend
from fastssl.ops.distributed import all_gather, all_gather_with_grad, rank, world_size

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Blockwise path: at most this many similarities per row block (16 MB in fp32); the backward holds
# three such temporaries, so the extra memory stays ~50 MB whatever N is.
CPU_BLOCK_ELEMS = 1 << 22
# Triton path keeps whole embedding rows in registers: D up to 512 (wider goes blockwise); fp32 (tf32x3
# dots) up to 128.
MAX_TRITON_D = 512
MAX_TRITON_D_FP32 = 128
NORM_EPS = 1e-12  # F.normalize's eps
# What runs where (shown by `python -m fastssl.info`).
_WHERE = {"cpu": "native: blockwise PyTorch (O(N*D) memory)",
          "cuda": f"triton: fused fwd/bwd kernels (D <= {MAX_TRITON_D}, fp32 D <= {MAX_TRITON_D_FP32}; else blockwise)"}
BACKENDS = {"nt_xent": _WHERE, "info_nce": _WHERE}


# ---------------------------------------------------------------------------------------------------
# checks (static: no tensor values are read, except positive_index for CPU tensors in eager mode)


def _check_temperature(temperature):
    """A validated Python float, or a 1-element floating tensor (not read: tau <= 0 -> NaN loss)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError("temperature must be a positive number or a 1-element floating tensor")
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return temperature


def _check(cond, msg: str) -> None:
    """torch._check with ValueError: symbolic-shape friendly under torch.compile, no host sync."""
    torch._check_with(ValueError, cond, lambda: msg)


def _check_embeddings(name: str, z) -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {z.dtype}")
    _check(z.shape[0] != 0, f"{name} is an empty batch (shape [0, D])")
    _check(z.shape[1] != 0, f"{name} has embedding dim D=0 (shape [N, 0])")


def _check_same(a_name, a, b_name, b) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}")


def _check_pair(z1, z2) -> None:
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    for i in (0, 1):
        _check(z1.shape[i] == z2.shape[i], "z1 and z2 must have the same shape")
    _check_same("z1", z1, "z2", z2)


def _check_info_nce(query, keys, positive_index, exclude_self) -> None:
    _check_embeddings("query", query)
    _check_embeddings("keys", keys)
    _check(query.shape[1] == keys.shape[1], "query and keys must have the same dim")
    _check_same("query", query, "keys", keys)
    if not isinstance(positive_index, torch.Tensor):
        raise ValueError("positive_index must be an integer tensor [M]")
    if positive_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"positive_index must be an integer tensor, got {positive_index.dtype}")
    if positive_index.dim() != 1:
        raise ValueError(f"positive_index must have shape [M] (M = query rows), got {tuple(positive_index.shape)}")
    _check(positive_index.shape[0] == query.shape[0], "positive_index must have shape [M] (M = query rows)")
    if positive_index.device != query.device:
        raise ValueError(f"positive_index is on {positive_index.device} but query is on {query.device}")
    if query.device.type == "cpu" and not torch.compiler.is_compiling():
        # a CPU read costs no device sync; elsewhere an invalid positive gives a NaN loss instead
        p = positive_index.long()
        if bool((p < 0).any()) or bool((p >= keys.shape[0]).any()):
            raise ValueError(f"positive_index out of range [0, {keys.shape[0]})")
        if exclude_self and bool((p == torch.arange(p.shape[0], device=p.device)).any()):
            raise ValueError("exclude_self=True but some positive_index[i] == i (the excluded key)")


def _pick_backend(x: torch.Tensor) -> str:
    backend = choose_backend(x, ("ref", "triton", "native"))
    if backend == "triton" and (x.dtype == torch.float64 or x.shape[1] > MAX_TRITON_D
                                or (x.dtype == torch.float32 and x.shape[1] > MAX_TRITON_D_FP32)):
        backend = "native"  # documented: fp64, D > 512 and fp32 with D > 128 take the blockwise path
    return backend


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tau_tensor(tau, z: Tensor) -> Tensor:
    """The temperature as a 0-d tensor in z's compute dtype on z's device (differentiable); a tensor
    that is not > 0 becomes NaN (no host read)."""
    cd = _compute_dtype(z.dtype)
    if isinstance(tau, torch.Tensor):
        t = tau.reshape(()).to(device=z.device, dtype=cd)
        return torch.where(t > 0, t, torch.full_like(t, float("nan")))
    return torch.full((), tau, dtype=cd, device=z.device)


def _nt_xent_positives(rows: int, offset: int, device) -> torch.Tensor:
    """Global index of the positive of each of ``rows`` local rows [z1_r; z2_r] starting at ``offset``."""
    return offset + (torch.arange(rows, device=device) + rows // 2) % rows


# ---------------------------------------------------------------------------------------------------
# references (the spec: full matrix, plain PyTorch, computed in the input dtype)


def _info_nce_ref_core(q, k, pos, temperature, normalize, self_offset):
    if normalize:
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.reshape(()).to(q.dtype)
    s = (q @ k.t()) / temperature
    if self_offset is not None:
        mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        mask.diagonal(self_offset).fill_(True)
        s = s.masked_fill(mask, float("-inf"))
    return F.cross_entropy(s, pos.long())


def info_nce_ref(query, keys, positive_index, temperature=0.1, normalize=True, exclude_self=False):
    """Plain-PyTorch spec of :func:`info_nce` (builds the [M, Nk] matrix); result in the input dtype."""
    _check_info_nce(query, keys, positive_index, exclude_self)
    tau = _check_temperature(temperature)
    return _info_nce_ref_core(query, keys, positive_index, tau, normalize, 0 if exclude_self else None)


def nt_xent_ref(z1, z2, temperature=0.1, normalize=True, gather=False):
    """Plain-PyTorch spec of :func:`nt_xent` (builds the 2N x 2N matrix); result in the input dtype."""
    _check_pair(z1, z2)
    tau = _check_temperature(temperature)
    z = torch.cat([z1, z2], dim=0)
    ws = world_size() if gather else 1
    if ws == 1:
        return _info_nce_ref_core(z, z, _nt_xent_positives(z.shape[0], 0, z.device), tau, normalize, 0)
    offset = rank() * z.shape[0]
    keys = all_gather_with_grad(z)
    pos = _nt_xent_positives(z.shape[0], offset, z.device)
    return _info_nce_ref_core(z, keys, pos, tau, normalize, offset)


# ---------------------------------------------------------------------------------------------------
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
# D <= MAX_TRITON_D_FP32 (the backward spills at BLOCK_D 256 even with 16 x 16 tiles).
_CONFIGS = {
    ("fwd", 2, 16): (128, 64, 4, 3), ("fwd", 2, 32): (128, 64, 4, 3), ("fwd", 2, 64): (128, 64, 4, 3),
    ("fwd", 2, 128): (128, 64, 8, 3), ("fwd", 2, 256): (128, 64, 8, 2), ("fwd", 2, 512): (64, 64, 8, 2),
    ("bwd", 2, 16): (64, 64, 4, 2), ("bwd", 2, 32): (64, 64, 4, 2), ("bwd", 2, 64): (64, 64, 4, 2),
    ("bwd", 2, 128): (64, 64, 4, 2), ("bwd", 2, 256): (64, 64, 8, 2), ("bwd", 2, 512): (32, 32, 8, 1),
    ("fwd", 4, 16): (64, 32, 4, 2), ("fwd", 4, 32): (64, 32, 4, 2), ("fwd", 4, 64): (64, 32, 4, 2),
    ("fwd", 4, 128): (16, 32, 4, 2),
    ("bwd", 4, 16): (32, 32, 4, 2), ("bwd", 4, 32): (32, 32, 4, 2), ("bwd", 4, 64): (32, 32, 4, 2),
    ("bwd", 4, 128): (16, 16, 4, 2),
}
_SMALL_SMEM = {
    ("fwd", 2, 512): (32, 32, 4, 2), ("bwd", 2, 512): (32, 32, 8, 1),
    ("fwd", 4, 16): (32, 32, 4, 2), ("fwd", 4, 32): (32, 32, 4, 2), ("fwd", 4, 64): (32, 32, 4, 2),
    ("bwd", 4, 128): (16, 32, 4, 2),
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


def _arch(x: Tensor) -> tuple[int, int] | None:
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
    ``wcol`` (gathered): per-row weights, ``grad`` then holds their scale (see _nt_xent_gathered_bwd);
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


def _launch(plan: list, x: Tensor) -> None:
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:  # the launch goes to the current device: make it the inputs' (cuda:1 works)
        for kernel, grid, args, kw in plan:
            wrap_triton(kernel)[grid](*args, **kw)


def _pad16(x: Tensor) -> Tensor:
    """Zero columns up to a multiple of 16: dots and norms are unchanged, and the row stride gets
    Triton's divisibility hint (D=200 without it: scalar loads, 64-bit pointers per element, spills)."""
    d = x.shape[1]
    return x if d % 16 == 0 else F.pad(x, (0, 16 - d % 16))


def _unpad(g: Tensor, d: int) -> Tensor:
    return g if g.shape[1] == d else g[:, :d].contiguous()


def _rnorm(x: Tensor, normalize: bool) -> Tensor:
    if not normalize:
        return x.new_ones(x.shape[0], dtype=torch.float32)
    rn = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    _launch(rnorm_plan(x, rn, _arch(x)), x)
    return rn


def _triton_forward(q, k, pos, tau, normalize, self_offset, exclude_self, pos_half):
    """Rows' lse and loss, plus the inverse norms (the backward reuses them)."""
    m = q.shape[0]
    q, k = _pad16(q), (None if k is q else _pad16(k))
    k = q if k is None else k
    rnq = _rnorm(q, normalize)
    rnk = rnq.clone() if k is q else _rnorm(k, normalize)  # op outputs may not alias each other
    lse = torch.empty(m, dtype=torch.float32, device=q.device)
    loss = torch.empty(m, dtype=torch.float32, device=q.device)
    _launch(fwd_plan(q, k, rnq, rnk, pos, tau, lse, loss, self_offset=self_offset, exclude_self=exclude_self,
                     pos_half=pos_half, normalize=normalize, arch=_arch(q)), q)
    return loss.mean(), lse, rnq, rnk


# ---------------------------------------------------------------------------------------------------
# blockwise PyTorch path (CPU; same algorithm, O(N*D + CPU_BLOCK_ELEMS) memory, fp32/fp64 throughout)


def _row_block(nk: int) -> int:
    return max(1, CPU_BLOCK_ELEMS // max(nk, 1))


def _unit_rows(x: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(u, r): rows in the compute dtype, normalized when asked, and their inverse norms."""
    xf = x.to(_compute_dtype(x.dtype))
    if not normalize:
        return xf, torch.ones(x.shape[0], dtype=xf.dtype, device=x.device)
    rn = torch.linalg.vector_norm(xf, dim=1).clamp_min_(NORM_EPS).reciprocal_()
    return xf * rn[:, None], rn


def _no_autocast(x: Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


def _blockwise_forward(q, k, pos, tau, self_offset):
    """q, k already normalized (compute dtype) -> per-row lse and loss (NaN for an invalid positive)."""
    m, nk = q.shape[0], k.shape[0]
    lse = q.new_empty(m)
    loss = q.new_empty(m)
    ok = (pos >= 0) & (pos < nk)
    if self_offset is not None:
        ok &= pos != torch.arange(m, device=q.device) + self_offset
    pos_c = torch.where(ok, pos, 0)
    kt, inv_tau, bm = k.t(), 1.0 / tau, _row_block(nk)
    for r0 in range(0, m, bm):
        r1 = min(m, r0 + bm)
        s = torch.mm(q[r0:r1], kt).mul_(inv_tau)
        s_pos = s.gather(1, pos_c[r0:r1, None]).squeeze(1)
        if self_offset is not None:
            s.diagonal(r0 + self_offset).fill_(float("-inf"))
        blk = torch.logsumexp(s, dim=1)
        lse[r0:r1] = blk
        loss[r0:r1] = blk - s_pos
    return lse, torch.where(ok, loss, float("nan"))


def _normalize_backward(gu: Tensor, u: Tensor, rn: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """dz from dL/du (u = z * rn) and the radial terms <dL/du_i, u_i>."""
    rad = torch.linalg.vecdot(gu, u)
    if not normalize:
        return gu, rad
    return (gu - rad[:, None] * u) * rn[:, None], rad


def _blockwise_nt_xent_backward(u, lse, tau):
    """dL/du for the symmetric loss (unit upstream gradient)."""
    r = u.shape[0]
    du = torch.empty_like(u)
    ut, inv_tau, bm = u.t(), 1.0 / tau, _row_block(r)
    lse_cols = lse[None, :]
    for r0 in range(0, r, bm):
        r1 = min(r, r0 + bm)
        s = torch.mm(u[r0:r1], ut).mul_(inv_tau)
        s.diagonal(r0).fill_(float("-inf"))
        p_ji = torch.sub(s, lse_cols).exp_()
        g = s.sub_(lse[r0:r1, None]).exp_().add_(p_ji)  # P_ij + P_ji, in place of s
        del p_ji
        rows = torch.arange(r1 - r0, device=u.device)
        g[rows, (rows + r0 + r // 2) % r] -= 2.0
        torch.mm(g, u, out=du[r0:r1])
    return du.mul_(1.0 / (r * tau))


def _blockwise_info_nce_backward(u, v, pos, lse, tau, self_offset, need_dq, need_dk):
    m, nk = u.shape[0], v.shape[0]
    du = torch.empty_like(u) if need_dq else None
    dv = torch.zeros_like(v) if need_dk else None
    vt, inv_tau, bm = v.t(), 1.0 / tau, _row_block(nk)
    scale = 1.0 / (m * tau)
    ok = (pos >= 0) & (pos < nk)
    pos_c = torch.where(ok, pos, 0)
    for r0 in range(0, m, bm):
        r1 = min(m, r0 + bm)
        s = torch.mm(u[r0:r1], vt).mul_(inv_tau)
        if self_offset is not None:
            s.diagonal(r0 + self_offset).fill_(float("-inf"))
        g = s.sub_(lse[r0:r1, None]).exp_()
        g[torch.arange(r1 - r0, device=u.device), pos_c[r0:r1]] -= 1.0
        g.mul_(scale)
        if need_dq:
            torch.mm(g, v, out=du[r0:r1])
        if need_dk:
            dv.addmm_(g.t(), u[r0:r1])  # sequential over row blocks: deterministic
    return du, dv


def _blockwise_nt_xent_gathered_backward(v, offset, m, lse, tau, w, need_ps):
    """d(sum_r w_r L_r)/du for the m local rows v[offset : offset + m] (gathered symmetric loss; v: every
    rank's normalized rows, lse: every row's lse, w: each row's rank's upstream gradient), and with
    ``need_ps`` the rows' sum_j P_ij s_ij (else None)."""
    nk = v.shape[0]
    du = v.new_empty(m, v.shape[1])
    ps = v.new_empty(m) if need_ps else None
    vt, inv_tau, bm = v.t(), 1.0 / tau, _row_block(nk)
    w_row = w[offset]
    for r0 in range(0, m, bm):
        r1 = min(m, r0 + bm)
        s = torch.mm(v[offset + r0:offset + r1], vt).mul_(inv_tau)
        if need_ps:
            p_ij = torch.sub(s, lse[offset + r0:offset + r1, None]).exp_()
            p_ij.diagonal(offset + r0).zero_()
            ps[r0:r1] = torch.linalg.vecdot(p_ij, s)
            del p_ij
        s.diagonal(offset + r0).fill_(float("-inf"))
        p_ji = torch.sub(s, lse[None, :]).exp_().mul_(w[None, :])
        g = s.sub_(lse[offset + r0:offset + r1, None]).exp_().mul_(w_row).add_(p_ji)  # w_r P_ij + w_j P_ji
        del p_ji
        rows = torch.arange(r1 - r0, device=v.device)
        g[rows, offset + (rows + r0 + m // 2) % m] -= 2.0 * w_row
        torch.mm(g, v, out=du[r0:r1])
    return du.mul_(1.0 / (m * tau)), ps


def _native_nt_xent_fwd(z, tau, normalize):
    with _no_autocast(z):
        u, rn = _unit_rows(z, normalize)
        pos = _nt_xent_positives(z.shape[0], 0, z.device)
        lse, loss = _blockwise_forward(u, u, pos, tau, 0)
        return loss.mean(), lse, rn


def _native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau):
    with _no_autocast(z):
        u = z.to(rn.dtype) * rn[:, None] if normalize else z.to(rn.dtype)
        gu = _blockwise_nt_xent_backward(u, lse, tau).mul_(grad)
        dz, rad = _normalize_backward(gu, u, rn, normalize)
        dtau = -rad.sum() / (2 * tau) if need_dtau else torch.zeros_like(tau)
        return dz.to(z.dtype), dtau


def _native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self):
    with _no_autocast(q):
        u, rnq = _unit_rows(q, normalize)
        v, rnk = _unit_rows(k, normalize)
        lse, loss = _blockwise_forward(u, v, pos, tau, self_offset if exclude_self else None)
        return loss.mean(), lse, rnq, rnk


def _native_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                         need_dk, need_dtau):
    with _no_autocast(q):
        cd = rnq.dtype
        u = q.to(cd) * rnq[:, None] if normalize else q.to(cd)
        v = k.to(cd) * rnk[:, None] if normalize else k.to(cd)
        du, dv = _blockwise_info_nce_backward(u, v, pos, lse, tau, self_offset if exclude_self else None,
                                              need_dq or need_dtau, need_dk)
        dq = dk = dtau = None
        if du is not None:
            dq, rad = _normalize_backward(du.mul_(grad), u, rnq, normalize)
            dtau = -rad.sum() / tau
            dq = dq.to(q.dtype)
        if dv is not None:
            dk = _normalize_backward(dv.mul_(grad), v, rnk, normalize)[0].to(k.dtype)
        return _or_empty(dq, q), _or_empty(dk, k), dtau if need_dtau else torch.zeros_like(tau)


def _or_empty(x, like: Tensor) -> Tensor:
    return like.new_empty(0) if x is None else x


# ---------------------------------------------------------------------------------------------------
# torch.library ops. The public functions pass the back end ("triton" or "native") as an argument, so
# the env var is read outside the ops (at every call; torch.compile guards on it).


@custom_op("fastssl::nt_xent_fwd_native", mutates_args=())
def nt_xent_fwd_native(z: Tensor, tau: Tensor, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise PyTorch forward (opaque to torch.compile, so its Python loop is never unrolled)."""
    return _native_nt_xent_fwd(z, tau, normalize)


@nt_xent_fwd_native.register_fake
def _(z, tau, normalize):
    cd = _compute_dtype(z.dtype)
    r = z.shape[0]
    return z.new_empty((), dtype=cd), z.new_empty(r, dtype=cd), z.new_empty(r, dtype=cd)


@custom_op("fastssl::nt_xent_bwd_native", mutates_args=())
def nt_xent_bwd_native(grad: Tensor, z: Tensor, tau: Tensor, lse: Tensor, rn: Tensor, normalize: bool,
                       need_dtau: bool) -> tuple[Tensor, Tensor]:
    return _native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


@nt_xent_bwd_native.register_fake
def _(grad, z, tau, lse, rn, normalize, need_dtau):
    return torch.empty_like(z), torch.empty_like(tau)


@triton_op("fastssl::nt_xent_fwd", mutates_args=())
def nt_xent_fwd(z: Tensor, tau: Tensor, normalize: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """NT-Xent forward on Z = [z1; z2] (raw rows): (mean loss, per-row lse, per-row 1/|z|)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_fwd_native(z, tau, normalize)
    loss, lse, rn, _ = _triton_forward(z, z, z.new_empty(0, dtype=torch.int64), tau.float(), normalize,
                                       0, True, True)
    return loss, lse, rn


@triton_op("fastssl::nt_xent_bwd", mutates_args=())
def nt_xent_bwd(grad: Tensor, z: Tensor, tau: Tensor, lse: Tensor, rn: Tensor, normalize: bool, need_dtau: bool,
                backend: str) -> tuple[Tensor, Tensor]:
    """dLoss/dZ (input dtype) and dLoss/dtau (tau's shape; zeros unless need_dtau)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_bwd_native(grad, z, tau, lse, rn, normalize, need_dtau)
    return _triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


@nt_xent_fwd.register_kernel("cpu")
def _(z, tau, normalize, backend):
    if backend == "triton":  # Triton on CPU tensors: the interpreter (tests)
        loss, lse, rn, _ = _triton_forward(z, z, z.new_empty(0, dtype=torch.int64), tau.float(), normalize,
                                           0, True, True)
        return loss, lse, rn
    return _native_nt_xent_fwd(z, tau, normalize)


@nt_xent_bwd.register_kernel("cpu")
def _(grad, z, tau, lse, rn, normalize, need_dtau, backend):
    if backend == "triton":
        return _triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)
    return _native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


def _rn_max(rn: Tensor, x: Tensor, normalize: bool) -> Tensor:
    """max_j 1/|x_j| for the fp16 G scale (one small reduction, fp16 only; else unused by the kernel)."""
    return rn.amax().reshape(1) if (normalize and x.dtype == torch.float16) else rn


def _triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau):
    d = z.shape[1]
    z = _pad16(z)
    dz = torch.empty_like(z)
    rad = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    tau32 = tau.float()
    _launch(nt_xent_bwd_plan(z, rn, _rn_max(rn, z, normalize), lse, tau32, grad.float(), dz, rad,
                             normalize=normalize, arch=_arch(z)), z)
    dtau = (-rad.sum() / (2 * tau32)).to(tau.dtype) if need_dtau else torch.zeros_like(tau)
    return _unpad(dz, d), dtau


def _nt_xent_setup(ctx, inputs, output):
    z, tau, normalize, backend = inputs
    _, lse, rn = output
    ctx.save_for_backward(z, tau, lse, rn)
    ctx.normalize, ctx.backend = normalize, backend


def _nt_xent_backward(ctx, grad, _grad_lse, _grad_rn):
    z, tau, lse, rn = ctx.saved_tensors
    need_dtau = ctx.needs_input_grad[1]
    dz, dtau = torch.ops.fastssl.nt_xent_bwd(grad, z, tau, lse, rn, ctx.normalize, need_dtau, ctx.backend)
    return dz, dtau if need_dtau else None, None, None


nt_xent_fwd.register_autograd(_nt_xent_backward, setup_context=_nt_xent_setup)


# gather=True backward without the keys' gradient (see _GatheredNtXent)


def _native_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    with _no_autocast(keys):
        m = keys.shape[0] // grads.shape[0]
        v = keys.to(rnk.dtype) * rnk[:, None] if normalize else keys.to(rnk.dtype)
        w = grads.to(rnk.dtype).repeat_interleave(m)
        gu, ps = _blockwise_nt_xent_gathered_backward(v, offset, m, lse, tau, w, need_ps)
        dz, _ = _normalize_backward(gu, v[offset:offset + m], rnk[offset:offset + m], normalize)
        return dz.to(keys.dtype), (ps if need_ps else lse.new_empty(0))


def _triton_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    m = keys.shape[0] // grads.shape[0]
    d = keys.shape[1]
    keys = _pad16(keys)
    g = grads.float()
    # weights in [-1, 1] keep |G| <= 2 (the fp16 G scale's assumption); their scale goes to the epilogue
    gmax = g.abs().amax().reshape(1)
    gmax = torch.where(gmax > 0, gmax, torch.ones_like(gmax))
    wcol = (g / gmax).repeat_interleave(m)
    dz = keys.new_empty(m, keys.shape[1])
    rad = torch.empty(m, dtype=torch.float32, device=keys.device)
    _launch(nt_xent_bwd_plan(keys, rnk, _rn_max(rnk, keys, normalize), lse, tau.float(), gmax, dz, rad,
                             normalize=normalize, arch=_arch(keys), m=m, self_offset=offset, wcol=wcol,
                             need_ps=need_ps), keys)
    return _unpad(dz, d), (rad if need_ps else rad.new_empty(0))


@custom_op("fastssl::nt_xent_gathered_bwd_native", mutates_args=())
def nt_xent_gathered_bwd_native(grads: Tensor, keys: Tensor, tau: Tensor, lse: Tensor, rnk: Tensor, offset: int,
                                normalize: bool, need_ps: bool) -> tuple[Tensor, Tensor]:
    return _native_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


def _gathered_bwd_fake(grads, keys, lse, need_ps):
    m = keys.shape[0] // grads.shape[0]
    return keys.new_empty(m, keys.shape[1]), lse.new_empty(m if need_ps else 0)


@nt_xent_gathered_bwd_native.register_fake
def _(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    return _gathered_bwd_fake(grads, keys, lse, need_ps)


@triton_op("fastssl::nt_xent_gathered_bwd", mutates_args=())
def nt_xent_gathered_bwd(grads: Tensor, keys: Tensor, tau: Tensor, lse: Tensor, rnk: Tensor, offset: int,
                         normalize: bool, need_ps: bool, backend: str) -> tuple[Tensor, Tensor]:
    """Gathered NT-Xent: d(sum_r grads[r] L_r)/dz for this rank's m = 2nW / W rows keys[offset : offset + m].
    grads [W] every rank's upstream gradient, keys [2nW, D] every rank's raw rows, lse [2nW] every row's
    lse, rnk [2nW] their inverse norms. Returns ([m, D] in the keys' dtype, and with ``need_ps`` the
    rows' sum_j P_ij s_ij [m] (natural logits; else empty), for dL/dtau)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_gathered_bwd_native(grads, keys, tau, lse, rnk, offset, normalize, need_ps)
    return _triton_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


@nt_xent_gathered_bwd.register_kernel("cpu")
def _(grads, keys, tau, lse, rnk, offset, normalize, need_ps, backend):
    fn = _triton_nt_xent_gathered_bwd if backend == "triton" else _native_nt_xent_gathered_bwd
    return fn(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


# "one_pass": gather=True uses _GatheredNtXent; "reduce_scatter": the keys' gradient goes back through
# all_gather_with_grad (the path before; kept for comparison in tests and benches/bench_nt_xent_gather.py)
GATHER_BACKWARD = "one_pass"


class _GatheredNtXent(torch.autograd.Function):
    """gather=True, one-pass backward. Forward: all-gather the raw rows Z (2nW x D), score the local
    rows against them, then all-gather the per-row lse (2nW floats). The sum over ranks of the local
    losses, T = sum_r g_r L_r (L_r a mean over rank r's 2n rows, g_r its upstream gradient), depends
    on s_ik = <u_i, u_k>/tau through every row's loss; s is symmetric, so for a local row k

        dT/du_k = 1/(2n tau) [sum_j (g_r P_kj + g_own(j) P_jk) u_j - 2 g_r u_pos(k)],
        P_ij = exp(s_ij - lse_i), P_ii = 0,

    with pos(k) local (pos(pos(k)) = k, so both positive terms carry g_r). Each rank computes its own
    rows' complete gradient in one pass over (local rows x all rows) tiles: no dk pass, no [2nW, D]
    reduce-scatter; the backward only all-gathers the W upstream gradients. dtau (learnable
    temperature) is rank r's own g_r dL_r/dtau, as before: with s_ij = c_ij / tau,
    dL_r/dtau = -1/(2n tau) sum_k (sum_j P_kj s_kj - s_k,pos(k)) = -(1/tau) (mean_k (PS_k - lse_k) + L_r),
    PS_k = sum_j P_kj s_kj summed by the same pass (s_k,pos = lse_k - loss_k)."""

    @staticmethod
    def forward(ctx, z, t, normalize, backend):
        m = z.shape[0]
        offset = rank() * m
        keys = all_gather(z)
        pos = _nt_xent_positives(m, offset, z.device)
        loss, lse, _, rnk = torch.ops.fastssl.info_nce_fwd(z, keys, pos, t, normalize, offset, True, backend)
        lse_all = all_gather(lse)
        ctx.save_for_backward(keys, t, loss, lse, lse_all, rnk)
        ctx.args = (offset, normalize, backend)
        return loss

    @staticmethod
    def backward(ctx, grad):
        keys, t, loss, lse, lse_all, rnk = ctx.saved_tensors
        offset, normalize, backend = ctx.args
        need_dtau = ctx.needs_input_grad[1]
        grads = all_gather(grad.detach().reshape(1).to(lse.dtype))
        dz, ps = torch.ops.fastssl.nt_xent_gathered_bwd(grads, keys, t, lse_all, rnk, offset, normalize, need_dtau,
                                                        backend)
        dtau = None
        if need_dtau:
            dtau = ((-grad / t) * ((ps.to(lse.dtype) - lse).mean() + loss)).to(t.dtype)
        return dz, dtau, None, None


@custom_op("fastssl::info_nce_fwd_native", mutates_args=())
def info_nce_fwd_native(q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, normalize: bool, self_offset: int,
                        exclude_self: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@info_nce_fwd_native.register_fake
def _(q, k, pos, tau, normalize, self_offset, exclude_self):
    cd = _compute_dtype(q.dtype)
    return (q.new_empty((), dtype=cd), q.new_empty(q.shape[0], dtype=cd), q.new_empty(q.shape[0], dtype=cd),
            q.new_empty(k.shape[0], dtype=cd))


@custom_op("fastssl::info_nce_bwd_native", mutates_args=())
def info_nce_bwd_native(grad: Tensor, q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, lse: Tensor, rnq: Tensor,
                        rnk: Tensor, normalize: bool, self_offset: int, exclude_self: bool, need_dq: bool,
                        need_dk: bool, need_dtau: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _native_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                                need_dk, need_dtau)


@info_nce_bwd_native.register_fake
def _(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk, need_dtau):
    dq = torch.empty_like(q) if need_dq else q.new_empty(0)
    dk = torch.empty_like(k) if need_dk else k.new_empty(0)
    return dq, dk, torch.empty_like(tau)


def _triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self):
    return _triton_forward(q, k, pos, tau.float(), normalize, self_offset, exclude_self, False)


def _triton_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                         need_dk, need_dtau):
    tau32 = tau.float()
    d = q.shape[1]
    q, k = _pad16(q), (None if k is q else _pad16(k))
    k = q if k is None else k
    want_dq = need_dq or need_dtau
    dq = torch.empty_like(q) if want_dq else None
    dk = torch.empty_like(k) if need_dk else None
    rad = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    _launch(info_nce_bwd_plan(q, k, rnq, rnk, _rn_max(rnq, q, normalize), _rn_max(rnk, k, normalize), pos, lse, tau32,
                              grad.float(), dq, dk, rad, self_offset=self_offset, exclude_self=exclude_self,
                              normalize=normalize, arch=_arch(q)), q)
    dtau = (-rad.sum() / tau32).to(tau.dtype) if need_dtau else torch.zeros_like(tau)
    dq = _unpad(dq, d) if need_dq else q.new_empty(0)
    return dq, _unpad(dk, d) if dk is not None else k.new_empty(0), dtau


@triton_op("fastssl::info_nce_fwd", mutates_args=())
def info_nce_fwd(q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, normalize: bool, self_offset: int,
                 exclude_self: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """InfoNCE forward on raw queries/keys: (mean loss, per-row lse, 1/|q|, 1/|k|)."""
    if backend != "triton":
        return torch.ops.fastssl.info_nce_fwd_native(q, k, pos, tau, normalize, self_offset, exclude_self)
    return _triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@triton_op("fastssl::info_nce_bwd", mutates_args=())
def info_nce_bwd(grad: Tensor, q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, lse: Tensor, rnq: Tensor, rnk: Tensor,
                 normalize: bool, self_offset: int, exclude_self: bool, need_dq: bool, need_dk: bool,
                 need_dtau: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dq or empty, dk or empty, dtau or zeros)."""
    if backend != "triton":
        return torch.ops.fastssl.info_nce_bwd_native(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset,
                                                     exclude_self, need_dq, need_dk, need_dtau)
    return _triton_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                                need_dk, need_dtau)


@info_nce_fwd.register_kernel("cpu")
def _(q, k, pos, tau, normalize, self_offset, exclude_self, backend):
    if backend == "triton":
        return _triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)
    return _native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@info_nce_bwd.register_kernel("cpu")
def _(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk, need_dtau,
      backend):
    fn = _triton_info_nce_bwd if backend == "triton" else _native_info_nce_bwd
    return fn(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk, need_dtau)


def _info_nce_setup(ctx, inputs, output):
    q, k, pos, tau, normalize, self_offset, exclude_self, backend = inputs
    _, lse, rnq, rnk = output
    ctx.save_for_backward(q, k, pos, tau, lse, rnq, rnk)
    ctx.args = (normalize, self_offset, exclude_self)
    ctx.backend = backend


def _info_nce_backward(ctx, grad, _g_lse, _g_rnq, _g_rnk):
    q, k, pos, tau, lse, rnq, rnk = ctx.saved_tensors
    need_dq, need_dk, _, need_dtau = ctx.needs_input_grad[:4]
    dq, dk, dtau = torch.ops.fastssl.info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, *ctx.args, need_dq, need_dk,
                                                  need_dtau, ctx.backend)
    return (dq if need_dq else None, dk if need_dk else None, None, dtau if need_dtau else None,
            None, None, None, None)


info_nce_fwd.register_autograd(_info_nce_backward, setup_context=_info_nce_setup)


# ---------------------------------------------------------------------------------------------------
# public API


def info_nce(query, keys, positive_index, temperature=0.1, normalize=True, exclude_self=False):
    """InfoNCE: mean over queries i of -log softmax_j(<q_i, k_j>/tau) at j = positive_index[i].

    query [M, D], keys [Nk, D] (same dtype and device), positive_index int [M] in [0, Nk).
    ``normalize``: cosine similarity (rows L2-normalized first). ``exclude_self``: key i is not a
    candidate for query i (query and keys are the same rows, as in NT-Xent). ``temperature``: a
    positive number or a 1-element tensor (may require grad). Keys from other ranks or a queue:
    concatenate them into ``keys`` (``fastssl.ops.distributed.all_gather_with_grad`` keeps the
    gradient). Returns an fp32 scalar (fp64 for fp64). Memory O((M + Nk) D); numerics contract in
    the module docstring. Raises ValueError for bad shapes, dtypes, devices or temperature.
    """
    _check_info_nce(query, keys, positive_index, exclude_self)
    tau = _check_temperature(temperature)
    backend = _pick_backend(query)
    if backend == "ref":
        tau = _tau_tensor(tau, query) if isinstance(tau, torch.Tensor) else tau
        out = info_nce_ref(query, keys, positive_index, tau, normalize, exclude_self)
        return out.to(_compute_dtype(query.dtype))
    q = query.contiguous()
    k = q if keys is query else keys.contiguous()
    pos = positive_index.long().contiguous()
    return torch.ops.fastssl.info_nce_fwd(q, k, pos, _tau_tensor(tau, q), normalize, 0, exclude_self, backend)[0]


def nt_xent(z1, z2, temperature=0.1, normalize=True, gather=False):
    """SimCLR NT-Xent over the 2N views [z1; z2] -> fp32 scalar (fp64 for fp64 inputs).

    z1, z2: [N, D] fp16/bf16/fp32/fp64, same shape, dtype and device (any strides). Row i's positive
    is row (i + N) mod 2N, its candidates every row j != i (2N - 1 of them), logits cosine
    similarity / ``temperature`` (raw dot products with ``normalize=False``); the loss is the mean of
    -log softmax(positive) over the 2N rows. Never builds the 2N x 2N matrix: extra memory O(N*D).
    ``temperature``: a positive number, or a 1-element tensor that may require grad (learnable,
    CLIP-style; tau <= 0 in a tensor gives NaN).

    ``gather=True`` under torch.distributed (world size W > 1): local rows are scored against every
    rank's rows; each rank returns its local contribution (mean over its 2n rows) so that the mean of
    the ranks' losses is the global-batch loss and DDP's gradient averaging yields exactly the
    single-process gradient (rank r's z grads are W x dL_global/dz_r). Same local N on every rank.
    Without a process group or with W = 1, ``gather`` is ignored. See the module docstring for the
    numerics contract (fp32 accumulation, error bound, determinism). Raises ValueError on bad input.
    """
    _check_pair(z1, z2)
    tau = _check_temperature(temperature)
    z = torch.cat([z1, z2], dim=0)
    backend = _pick_backend(z)
    if backend == "ref":
        tau = _tau_tensor(tau, z) if isinstance(tau, torch.Tensor) else tau
        return nt_xent_ref(z1, z2, tau, normalize, gather).to(_compute_dtype(z.dtype))
    t = _tau_tensor(tau, z)
    ws = world_size() if gather else 1
    if ws == 1:
        return torch.ops.fastssl.nt_xent_fwd(z, t, normalize, backend)[0]
    if GATHER_BACKWARD == "one_pass":
        return _GatheredNtXent.apply(z, t, normalize, backend)
    offset = rank() * z.shape[0]
    keys = all_gather_with_grad(z)
    pos = _nt_xent_positives(z.shape[0], offset, z.device)
    return torch.ops.fastssl.info_nce_fwd(z, keys, pos, t, normalize, offset, True, backend)[0]


class NTXentLoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`nt_xent`: ``NTXentLoss(temperature)(z1, z2)``."""

    def __init__(self, temperature: float = 0.1, gather: bool = False, normalize: bool = True):
        super().__init__()
        self.temperature = _check_temperature(temperature)
        self.gather = gather
        self.normalize = normalize

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature, normalize=self.normalize, gather=self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, normalize={self.normalize}"
