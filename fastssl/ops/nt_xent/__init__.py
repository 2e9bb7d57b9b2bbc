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
- CUDA tensors: the Triton kernels of ``fastssl.kernels.nt_xent`` (fp16/bf16 D <= 512, fp32 D <= 128;
  plans.py, launch.py);
- CPU tensors (and CUDA fp64, D > 512, fp32 D > 128): a blockwise PyTorch version of the same algorithm, row
  blocks of at most ``cpu.CPU_BLOCK_ELEMS`` similarities against all keys (exact logsumexp per block,
  matmuls), memory O(N*D + CPU_BLOCK_ELEMS; cpu.py);
- ``FASTSSL_BACKEND=ref``: ``*_ref``, the full-matrix spec (O(N^2) memory; ref.py).

torch.library: the work is done by the ops ``torch.ops.fastssl.{nt_xent,info_nce}_{fwd,bwd}`` (register.py;
``custom_op`` for CUDA (not ``triton_op``: register.py says why), ``register_kernel("cpu")`` for the
blockwise path, fake implementations, ``register_autograd``), so ``torch.compile(fullgraph=True)`` traces through the
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
``plans.key_splits`` (``plans.SPLIT_K = k`` forces k splits).

Distributed (``gather=True`` with an initialized process group of world size W > 1): every rank
scores its local 2n rows [z1_r; z2_r] against all ranks' rows (all-gathered) and returns its LOCAL
contribution: the mean over its own 2n rows of the loss against the global batch of 2nW views. The
forward also all-gathers the per-row lse (2nW floats); the backward then computes each rank's own
rows' complete gradient in one pass over (local rows x all rows) tiles (``gather.GatheredNtXent``: the
similarity is symmetric, so the keys' side of the gradient is P_ji = exp(s_ij - lse_j)), and only
all-gathers the W upstream gradients: no dk pass and no [2nW, D] reduce-scatter
(``GATHER_BACKWARD = "reduce_scatter"`` selects the previous path, kept for comparison). So
mean_r(loss_r) equals the single-process loss over the global batch, and rank r's gradient is
d(sum_r loss_r)/dz_r = W * dL_global/dz_r: after DDP's gradient averaging (1/W) the parameters
receive exactly the single-process global gradient. Every rank must use the same local batch size
and call backward. Without a process group (or W = 1) gather=True is gather=False.

Layout (imports only point down: this package -> gather -> register -> cpu, launch; launch -> plans;
cpu -> ref -> checks):
- ``__init__``: dispatch (``FASTSSL_BACKEND``, the Triton path's D limits) and the public functions;
- ``checks``: input checks (ValueError); ``ref``: the full-matrix references (the spec), the positive
  layout and the compute dtype; ``cpu``: the blockwise PyTorch path; ``plans``: Triton configs per
  arch, split-K and launch plans (built without launching); ``launch``: the Triton path (pad, allocate,
  launch the plans); ``register``: the ``torch.ops.fastssl`` ops (kernels, fakes, autograd);
  ``gather``: gather=True's one-pass backward (``autograd.Function``).
``fastssl.ops.nt_xent`` as an attribute of ``fastssl.ops`` is the function: reach this package's modules
with ``from fastssl.ops.nt_xent import plans`` (not ``import fastssl.ops.nt_xent.plans as ...``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastssl.ops._backend import choose_backend
from fastssl.ops._checks import FLOAT_DTYPES
from fastssl.ops.distributed import all_gather_with_grad, rank, world_size
from fastssl.ops.nt_xent import register  # noqa: F401  (registers the torch.ops.fastssl ops used below)
from fastssl.ops.nt_xent.checks import check_info_nce, check_pair, check_temperature
from fastssl.ops.nt_xent.cpu import NORM_EPS
from fastssl.ops.nt_xent.gather import GatheredNtXent
from fastssl.ops.nt_xent.plans import (
    INTERPRETER_SMS,
    MAX_SPLIT,
    MAX_TRITON_D,
    MAX_TRITON_D_FP32,
    MIN_SPLIT_TILES,
    SMEM_LIMIT,
    block_d_for,
    fwd_plan,
    info_nce_bwd_plan,
    key_splits,
    nt_xent_bwd_plan,
    rnorm_plan,
    triton_config,
)
from fastssl.ops.nt_xent.ref import compute_dtype, info_nce_ref, nt_xent_positives, nt_xent_ref
from fastssl.ops.nt_xent.register import (
    info_nce_bwd,
    info_nce_bwd_native,
    info_nce_fwd,
    info_nce_fwd_native,
    nt_xent_bwd,
    nt_xent_bwd_native,
    nt_xent_fwd,
    nt_xent_fwd_native,
    nt_xent_gathered_bwd,
    nt_xent_gathered_bwd_native,
)

# The public API, then the module's other public names before the split, kept importable from here; not
# the two knobs: set those where they are read (plans.SPLIT_K, cpu.CPU_BLOCK_ELEMS), a copy here would do
# nothing.
__all__ = ["nt_xent", "info_nce", "NTXentLoss", "nt_xent_ref", "info_nce_ref", "BACKENDS", "GATHER_BACKWARD",
           "MAX_TRITON_D", "MAX_TRITON_D_FP32",
           "FLOAT_DTYPES", "NORM_EPS", "INTERPRETER_SMS", "MAX_SPLIT", "MIN_SPLIT_TILES", "SMEM_LIMIT",
           "block_d_for", "fwd_plan", "info_nce_bwd_plan", "key_splits", "nt_xent_bwd_plan", "rnorm_plan",
           "triton_config", "info_nce_bwd", "info_nce_bwd_native", "info_nce_fwd", "info_nce_fwd_native",
           "nt_xent_bwd", "nt_xent_bwd_native", "nt_xent_fwd", "nt_xent_fwd_native", "nt_xent_gathered_bwd",
           "nt_xent_gathered_bwd_native"]

# What runs where (shown by `python -m fastssl.info`).
_WHERE = {"cpu": "native: blockwise PyTorch (O(N*D) memory)",
          "cuda": f"triton: fused fwd/bwd kernels (D <= {MAX_TRITON_D}, fp32 D <= {MAX_TRITON_D_FP32}; else blockwise)"}
BACKENDS = {"nt_xent": _WHERE, "info_nce": _WHERE}

# "one_pass": gather=True uses gather.GatheredNtXent; "reduce_scatter": the keys' gradient goes back through
# all_gather_with_grad (the path before; kept for comparison in tests and benches/bench_nt_xent_gather.py)
GATHER_BACKWARD = "one_pass"


def _pick_backend(x: torch.Tensor) -> str:
    backend = choose_backend(x, ("ref", "triton", "native"))
    if backend == "triton" and (x.dtype == torch.float64 or x.shape[1] > MAX_TRITON_D
                                or (x.dtype == torch.float32 and x.shape[1] > MAX_TRITON_D_FP32)):
        backend = "native"  # documented: fp64, D > 512 and fp32 with D > 128 take the blockwise path
    return backend


def _tau_tensor(tau, z: Tensor) -> Tensor:
    """The temperature as a 0-d tensor in z's compute dtype on z's device (differentiable); a tensor
    that is not > 0 becomes NaN (no host read)."""
    cd = compute_dtype(z.dtype)
    if isinstance(tau, torch.Tensor):
        t = tau.reshape(()).to(device=z.device, dtype=cd)
        return torch.where(t > 0, t, torch.full_like(t, float("nan")))
    return torch.full((), tau, dtype=cd, device=z.device)


def info_nce(query, keys, positive_index, temperature=0.1, normalize=True, exclude_self=False):
    """InfoNCE: mean over queries i of -log softmax_j(<q_i, k_j>/tau) at j = positive_index[i].

    query [M, D], keys [Nk, D] (same dtype and device), positive_index int [M] in [0, Nk).
    ``normalize``: cosine similarity (rows L2-normalized first). ``exclude_self``: key i is not a
    candidate for query i (query and keys are the same rows, as in NT-Xent). ``temperature``: a
    positive number or a 1-element tensor (may require grad). Keys from other ranks or a queue:
    concatenate them into ``keys`` (``fastssl.ops.distributed.all_gather_with_grad`` keeps the
    gradient). Returns an fp32 scalar (fp64 for fp64). Memory O((M + Nk) D); numerics contract in
    the package docstring (fastssl.ops.nt_xent). Raises ValueError for bad shapes, dtypes, devices or temperature.
    """
    check_info_nce(query, keys, positive_index, exclude_self)
    tau = check_temperature(temperature)
    backend = _pick_backend(query)
    if backend == "ref":
        tau = _tau_tensor(tau, query) if isinstance(tau, torch.Tensor) else tau
        out = info_nce_ref(query, keys, positive_index, tau, normalize, exclude_self)
        return out.to(compute_dtype(query.dtype))
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
    Without a process group or with W = 1, ``gather`` is ignored. See the package docstring for the
    numerics contract (fp32 accumulation, error bound, determinism). Raises ValueError on bad input.
    """
    check_pair(z1, z2)
    tau = check_temperature(temperature)
    z = torch.cat([z1, z2], dim=0)
    backend = _pick_backend(z)
    if backend == "ref":
        tau = _tau_tensor(tau, z) if isinstance(tau, torch.Tensor) else tau
        return nt_xent_ref(z1, z2, tau, normalize, gather).to(compute_dtype(z.dtype))
    t = _tau_tensor(tau, z)
    ws = world_size() if gather else 1
    if ws == 1:
        return torch.ops.fastssl.nt_xent_fwd(z, t, normalize, backend)[0]
    if GATHER_BACKWARD == "one_pass":
        return GatheredNtXent.apply(z, t, normalize, backend)
    offset = rank() * z.shape[0]
    keys = all_gather_with_grad(z)
    pos = nt_xent_positives(z.shape[0], offset, z.device)
    return torch.ops.fastssl.info_nce_fwd(z, keys, pos, t, normalize, offset, True, backend)[0]


class NTXentLoss(torch.nn.Module):
    """``nn.Module`` wrapper of :func:`nt_xent`: ``NTXentLoss(temperature)(z1, z2)``."""

    def __init__(self, temperature: float = 0.1, gather: bool = False, normalize: bool = True):
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.gather = gather
        self.normalize = normalize

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature, normalize=self.normalize, gather=self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, normalize={self.normalize}"
