"""NT-Xent (SimCLR) and InfoNCE without the N x N matrix.

``nt_xent(z1, z2, temperature=0.1, normalize=True, gather=False)``: SimCLR's symmetric loss over the
2N views Z = [z1; z2]: for row i the positive is row (i + N) mod 2N, the candidates are every row
j != i, logits are cosine similarity / temperature; the loss is the mean over the 2N rows of
-log softmax(positive). ``info_nce(query, keys, positive_index, ...)`` is the general form (queries
against a key set: CLIP/MoCo); ``nt_xent`` is its case query = keys = Z with ``exclude_self``.

Algorithm: the forward streams over blocks of keys with an online logsumexp (flash-attention style)
and keeps only the per-row logsumexp (O(N) extra); the backward recomputes the similarity tiles.
For the symmetric loss dL/dZ_i = sum_j G_ij Z_j / tau, G_ij = (P_ij + P_ji - 2[j = pos(i)]) / 2N,
P_ij = exp(S_ij / tau - lse_i), one pass per row block without atomics; then the normalization's
backward (autograd through ``F.normalize``). Back ends (``fastssl.ops._backend``):
- CUDA tensors: the Triton kernels of ``fastssl.kernels.nt_xent`` (D <= 512, fp16/bf16/fp32);
- CPU tensors (and CUDA fp64 or D > 512): a blockwise PyTorch version of the same algorithm, row
  blocks of at most ``CPU_BLOCK_ELEMS`` similarities against all keys (exact logsumexp per block,
  matmuls), memory O(N*D + CPU_BLOCK_ELEMS);
- ``FASTSSL_BACKEND=ref``: ``*_ref``, the full-matrix spec (O(N^2) memory).

Numerics contract:
- inputs fp16, bf16, fp32 (and fp64, on the blockwise path); z1/z2 (query/keys) same dtype/device;
- normalization in fp32 (fp64 for fp64); similarities, exp/log and the loss accumulate in fp32
  (fp64 for fp64 inputs). On the Triton path 16-bit inputs are normalized in fp32, rounded to the
  input dtype and fed to tensor-core dots with fp32 accumulation; fp32 inputs use IEEE fp32 dots
  (never tf32). The blockwise CPU path computes in fp32 throughout;
- returns an fp32 scalar (fp64 for fp64 inputs); gradients in the input dtype;
- error bound the tests enforce: |loss - ref64| and |grad - grad_ref64| at most 2x the error of the
  reference computed in the input's own dtype, plus the floor of tests/helpers.TOL;
- exact for any temperature > 0 (online max, no 1/tau bound assumed; tested down to 0.01);
- NaN anywhere in the inputs -> NaN loss (never a silent number); bad input -> ValueError;
- deterministic: no atomics, fixed reduction order: same inputs on the same device -> the same bits
  for the loss and the gradients.

Distributed (``gather=True`` with an initialized process group of world size W > 1): every rank
scores its local 2n rows [z1_r; z2_r] against all ranks' rows (gathered with
``all_gather_with_grad``; the backward reduce-scatters the keys' gradients to their owners) and
returns its LOCAL contribution: the mean over its own 2n rows of the loss against the global batch
of 2nW views. So mean_r(loss_r) equals the single-process loss over the global batch, and rank r's
gradient is d(sum_r loss_r)/dz_r = W * dL_global/dz_r: after DDP's gradient averaging (1/W) the
parameters receive exactly the single-process global gradient. Every rank must use the same local
batch size and call backward. Without a process group (or W = 1) gather=True is gather=False.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # triton is optional at import time (CPU-only installs use the blockwise path)
    import triton
except ImportError:  # pragma: no cover
    triton = None

from fastssl.ops._backend import choose_backend
from fastssl.ops.distributed import all_gather_with_grad, rank, world_size

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Blockwise path: at most this many similarities per row block (16 MB in fp32); the backward holds
# three such temporaries, so the extra memory stays ~50 MB whatever N is.
CPU_BLOCK_ELEMS = 1 << 22
# Triton path keeps whole embedding rows in registers: D up to 512 (wider goes blockwise).
MAX_TRITON_D = 512
# What runs where (shown by `python -m fastssl.info`).
_WHERE = {"cpu": "native: blockwise PyTorch (O(N*D) memory)",
          "cuda": f"triton: fused fwd/bwd kernels (D <= {MAX_TRITON_D}; else blockwise)"}
BACKENDS = {"nt_xent": _WHERE, "info_nce": _WHERE}


# ---------------------------------------------------------------------------------------------------
# checks


def _check_temperature(temperature) -> float:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError("temperature must be a positive number")
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return temperature


def _check_embeddings(name: str, z) -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {z.dtype}")
    if z.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(z.shape)})")
    if z.shape[1] == 0:
        raise ValueError(f"{name} has embedding dim D=0 (shape {tuple(z.shape)})")


def _check_same(a_name, a, b_name, b) -> None:
    if a.device != b.device:
        raise ValueError(f"{a_name} is on {a.device} but {b_name} is on {b.device}")
    if a.dtype != b.dtype:
        raise ValueError(f"{a_name} is {a.dtype} but {b_name} is {b.dtype}")


def _check_pair(z1, z2) -> None:
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    _check_same("z1", z1, "z2", z2)


def _check_info_nce(query, keys, positive_index, exclude_self) -> None:
    _check_embeddings("query", query)
    _check_embeddings("keys", keys)
    if query.shape[1] != keys.shape[1]:
        raise ValueError(f"query and keys must have the same dim, got {query.shape[1]} and {keys.shape[1]}")
    _check_same("query", query, "keys", keys)
    if not isinstance(positive_index, torch.Tensor):
        raise ValueError("positive_index must be an integer tensor [M]")
    if positive_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"positive_index must be an integer tensor, got {positive_index.dtype}")
    if positive_index.shape != (query.shape[0],):
        raise ValueError(
            f"positive_index must have shape [{query.shape[0]}], got {tuple(positive_index.shape)}")
    if positive_index.device != query.device:
        raise ValueError(f"positive_index is on {positive_index.device} but query is on {query.device}")
    p = positive_index.long()
    if bool((p < 0).any()) or bool((p >= keys.shape[0]).any()):
        raise ValueError(f"positive_index out of range [0, {keys.shape[0]})")
    if exclude_self and bool((p == torch.arange(p.shape[0], device=p.device)).any()):
        raise ValueError("exclude_self=True but some positive_index[i] == i (the excluded key)")


def _pick_backend(x: torch.Tensor) -> str:
    backend = choose_backend(x, ("ref", "triton", "native"))
    if backend == "triton" and (x.dtype == torch.float64 or x.shape[1] > MAX_TRITON_D):
        backend = "native"  # documented: fp64 and D > 512 take the blockwise path
    return backend


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(z: torch.Tensor, normalize: bool, backend: str) -> torch.Tensor:
    """Normalized (or not) contiguous rows in the dtype the back end computes in (differentiable)."""
    cd = _compute_dtype(z.dtype)
    if normalize:
        zn = F.normalize(z.to(cd), dim=1)
    else:
        zn = z.to(cd)
    if backend == "triton":
        zn = zn.to(z.dtype)  # 16-bit tiles for the tensor cores (no-op for fp32)
    return zn.contiguous()


def _nt_xent_positives(rows: int, offset: int, device) -> torch.Tensor:
    """Global index of the positive of each of ``rows`` local rows [z1_r; z2_r] starting at ``offset``."""
    return offset + (torch.arange(rows, device=device) + rows // 2) % rows


# ---------------------------------------------------------------------------------------------------
# references (the spec: full matrix, plain PyTorch, computed in the input dtype)


def _info_nce_ref_core(q, k, pos, temperature, normalize, self_offset):
    if normalize:
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
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
# Triton launchers (CUDA; CPU tensors under TRITON_INTERPRET=1)


def _triton_config(x: torch.Tensor, d: int) -> dict:
    block_d = max(16, 1 << (d - 1).bit_length())
    if not x.is_cuda:  # interpreter: small tiles so tiny test shapes still span several blocks
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=1, UPCAST=True)
    # 128 x 64 tiles, 8 warps, 3 stages: flash-attention's choice at head dim 128 in 16 bits. Wider
    # rows (in bytes: fp32, or D > 128) get smaller tiles so q + acc stay in registers and the staged
    # key tiles fit in shared memory (sm80 and later; checked by an sm90 ahead-of-time compile: no
    # spills, <= 136 KB shared memory).
    row_bytes = block_d * x.element_size()
    if row_bytes <= 256:
        bm, bn, stages = 128, 64, 3
    elif row_bytes <= 512:
        bm, bn, stages = 64, 64, 2
    elif row_bytes <= 1024:
        bm, bn, stages = 64, 32, 2
    else:
        bm, bn, stages = 32, 32, 1
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, num_warps=8, num_stages=stages, UPCAST=False)


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def _triton_forward(q, k, pos, temperature, self_offset):
    from fastssl.kernels.nt_xent import LOG2E, _info_nce_fwd_kernel

    m, d = q.shape
    cfg = _triton_config(q, d)
    lse = torch.empty(m, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]),)
    _info_nce_fwd_kernel[grid](
        q, k, lse, m, k.shape[0], d, 0 if self_offset is None else self_offset, LOG2E / temperature,
        EXCLUDE_SELF=self_offset is not None, DOT_PRECISION=_dot_precision(q.dtype), **cfg)
    # positive logit: exact products of the input-dtype values, summed in fp32 (O(M*D))
    s_pos = torch.linalg.vecdot(q.float(), k.index_select(0, pos).float()) / temperature
    return lse, lse - s_pos


def _triton_nt_xent_backward(z, lse, temperature):
    from fastssl.kernels.nt_xent import LOG2E, _nt_xent_bwd_kernel

    r, d = z.shape
    cfg = _triton_config(z, d)
    dz = torch.empty((r, d), dtype=torch.float32, device=z.device)
    grid = (triton.cdiv(r, cfg["BLOCK_M"]),)
    _nt_xent_bwd_kernel[grid](z, lse, dz, r, r // 2, d, LOG2E / temperature, 1.0 / (r * temperature),
                              DOT_PRECISION=_dot_precision(z.dtype), **cfg)
    return dz


def _triton_info_nce_backward(q, k, pos, lse, temperature, self_offset, need_dq, need_dk):
    from fastssl.kernels.nt_xent import LOG2E, _info_nce_bwd_dk_kernel, _info_nce_bwd_dq_kernel

    m, d = q.shape
    nk = k.shape[0]
    cfg = _triton_config(q, d)
    args = (m, nk, d, 0 if self_offset is None else self_offset, LOG2E / temperature, 1.0 / (m * temperature))
    kw = dict(EXCLUDE_SELF=self_offset is not None, DOT_PRECISION=_dot_precision(q.dtype), **cfg)
    dq = dk = None
    if need_dq:
        dq = torch.empty((m, d), dtype=torch.float32, device=q.device)
        _info_nce_bwd_dq_kernel[(triton.cdiv(m, cfg["BLOCK_M"]),)](q, k, pos, lse, dq, *args, **kw)
    if need_dk:
        dk = torch.empty((nk, d), dtype=torch.float32, device=q.device)
        _info_nce_bwd_dk_kernel[(triton.cdiv(nk, cfg["BLOCK_N"]),)](q, k, pos, lse, dk, *args, **kw)
    return dq, dk


# ---------------------------------------------------------------------------------------------------
# blockwise PyTorch path (CPU; same algorithm, O(N*D + CPU_BLOCK_ELEMS) memory)


def _row_block(nk: int) -> int:
    return max(1, CPU_BLOCK_ELEMS // max(nk, 1))


def _blockwise_forward(q, k, pos, temperature, self_offset):
    m, nk = q.shape[0], k.shape[0]
    lse = q.new_empty(m)
    loss = q.new_empty(m)
    kt, inv_tau, bm = k.t(), 1.0 / temperature, _row_block(nk)
    for r0 in range(0, m, bm):
        r1 = min(m, r0 + bm)
        s = torch.mm(q[r0:r1], kt).mul_(inv_tau)
        s_pos = s.gather(1, pos[r0:r1, None]).squeeze(1)
        if self_offset is not None:
            s.diagonal(r0 + self_offset).fill_(float("-inf"))
        blk = torch.logsumexp(s, dim=1)
        lse[r0:r1] = blk
        loss[r0:r1] = blk - s_pos
    return lse, loss


def _blockwise_nt_xent_backward(z, lse, temperature):
    r = z.shape[0]
    dz = torch.empty_like(z)
    zt, inv_tau, bm = z.t(), 1.0 / temperature, _row_block(r)
    lse_cols = lse[None, :]
    for r0 in range(0, r, bm):
        r1 = min(r, r0 + bm)
        s = torch.mm(z[r0:r1], zt).mul_(inv_tau)
        s.diagonal(r0).fill_(float("-inf"))
        p_ji = torch.sub(s, lse_cols).exp_()
        g = s.sub_(lse[r0:r1, None]).exp_().add_(p_ji)  # P_ij + P_ji, in place of s
        del p_ji
        rows = torch.arange(r1 - r0, device=z.device)
        g[rows, (rows + r0 + r // 2) % r] -= 2.0
        torch.mm(g, z, out=dz[r0:r1])
    return dz.mul_(1.0 / (r * temperature))


def _blockwise_info_nce_backward(q, k, pos, lse, temperature, self_offset, need_dq, need_dk):
    m, nk = q.shape[0], k.shape[0]
    dq = torch.empty_like(q) if need_dq else None
    dk = torch.zeros_like(k) if need_dk else None
    kt, inv_tau, bm = k.t(), 1.0 / temperature, _row_block(nk)
    scale = 1.0 / (m * temperature)
    for r0 in range(0, m, bm):
        r1 = min(m, r0 + bm)
        s = torch.mm(q[r0:r1], kt).mul_(inv_tau)
        if self_offset is not None:
            s.diagonal(r0 + self_offset).fill_(float("-inf"))
        g = s.sub_(lse[r0:r1, None]).exp_()
        g[torch.arange(r1 - r0, device=q.device), pos[r0:r1]] -= 1.0
        g.mul_(scale)
        if need_dq:
            torch.mm(g, k, out=dq[r0:r1])
        if need_dk:
            dk.addmm_(g.t(), q[r0:r1])  # sequential over row blocks: deterministic
    return dq, dk


# ---------------------------------------------------------------------------------------------------
# autograd


def _forward(backend, q, k, pos, temperature, self_offset):
    if backend == "triton":
        return _triton_forward(q, k, pos, temperature, self_offset)
    return _blockwise_forward(q, k, pos, temperature, self_offset)


class _NTXentFn(torch.autograd.Function):
    """Symmetric NT-Xent on prepared rows Z [2N, D] -> mean loss (fp32, fp64 for fp64)."""

    @staticmethod
    def forward(ctx, z, temperature, backend):
        pos = _nt_xent_positives(z.shape[0], 0, z.device)
        lse, row_loss = _forward(backend, z, z, pos, temperature, 0)
        ctx.save_for_backward(z, lse)
        ctx.temperature, ctx.backend = temperature, backend
        return row_loss.mean()

    @staticmethod
    def backward(ctx, grad):
        z, lse = ctx.saved_tensors
        if ctx.backend == "triton":
            dz = _triton_nt_xent_backward(z, lse, ctx.temperature)
        else:
            dz = _blockwise_nt_xent_backward(z, lse, ctx.temperature)
        return (dz * grad).to(z.dtype), None, None


class _InfoNCEFn(torch.autograd.Function):
    """Queries [M, D] against keys [Nk, D] (prepared) -> mean loss; self_offset=None: no exclusion."""

    @staticmethod
    def forward(ctx, q, k, pos, temperature, self_offset, backend):
        lse, row_loss = _forward(backend, q, k, pos, temperature, self_offset)
        ctx.save_for_backward(q, k, pos, lse)
        ctx.temperature, ctx.self_offset, ctx.backend = temperature, self_offset, backend
        return row_loss.mean()

    @staticmethod
    def backward(ctx, grad):
        q, k, pos, lse = ctx.saved_tensors
        need_dq, need_dk = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        fn = _triton_info_nce_backward if ctx.backend == "triton" else _blockwise_info_nce_backward
        dq, dk = fn(q, k, pos, lse, ctx.temperature, ctx.self_offset, need_dq, need_dk)
        dq = None if dq is None else (dq * grad).to(q.dtype)
        dk = None if dk is None else (dk * grad).to(k.dtype)
        return dq, dk, None, None, None, None


# ---------------------------------------------------------------------------------------------------
# public API


def info_nce(query, keys, positive_index, temperature=0.1, normalize=True, exclude_self=False):
    """InfoNCE: mean over queries i of -log softmax_j(<q_i, k_j>/tau) at j = positive_index[i].

    query [M, D], keys [Nk, D] (same dtype and device), positive_index int [M] in [0, Nk).
    ``normalize``: cosine similarity (rows L2-normalized first). ``exclude_self``: key i is not a
    candidate for query i (query and keys are the same rows, as in NT-Xent). Keys from other ranks or
    a queue: concatenate them into ``keys`` (``fastssl.ops.distributed.all_gather_with_grad`` keeps
    the gradient). Memory O((M + Nk) D); numerics contract in the module docstring.
    """
    _check_info_nce(query, keys, positive_index, exclude_self)
    tau = _check_temperature(temperature)
    backend = _pick_backend(query)
    if backend == "ref":
        out = info_nce_ref(query, keys, positive_index, tau, normalize, exclude_self)
        return out.to(_compute_dtype(query.dtype))
    qh = _prepare(query, normalize, backend)
    kh = qh if keys is query else _prepare(keys, normalize, backend)
    pos = positive_index.long().contiguous()
    return _InfoNCEFn.apply(qh, kh, pos, tau, 0 if exclude_self else None, backend)


def nt_xent(z1, z2, temperature=0.1, normalize=True, gather=False):
    """SimCLR NT-Xent over the 2N views [z1; z2] -> fp32 scalar (fp64 for fp64 inputs).

    z1, z2: [N, D] fp16/bf16/fp32/fp64, same shape, dtype and device (any strides). Row i's positive
    is row (i + N) mod 2N, its candidates every row j != i (2N - 1 of them), logits cosine
    similarity / ``temperature`` (raw dot products with ``normalize=False``); the loss is the mean of
    -log softmax(positive) over the 2N rows. Never builds the 2N x 2N matrix: extra memory O(N*D).

    ``gather=True`` under torch.distributed (world size W > 1): local rows are scored against every
    rank's rows; each rank returns its local contribution (mean over its 2n rows) so that the mean of
    the ranks' losses is the global-batch loss and DDP's gradient averaging yields exactly the
    single-process gradient (rank r's z grads are W x dL_global/dz_r). Same local N on every rank.
    Without a process group or with W = 1, ``gather`` is ignored. See the module docstring for the
    numerics contract (fp32 accumulation, error bound, determinism).
    """
    _check_pair(z1, z2)
    tau = _check_temperature(temperature)
    z = torch.cat([z1, z2], dim=0)
    backend = _pick_backend(z)
    if backend == "ref":
        return nt_xent_ref(z1, z2, tau, normalize, gather).to(_compute_dtype(z.dtype))
    zh = _prepare(z, normalize, backend)
    ws = world_size() if gather else 1
    if ws == 1:
        return _NTXentFn.apply(zh, tau, backend)
    offset = rank() * zh.shape[0]
    keys = all_gather_with_grad(zh)
    pos = _nt_xent_positives(zh.shape[0], offset, zh.device)
    return _InfoNCEFn.apply(zh, keys, pos, tau, offset, backend)


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
