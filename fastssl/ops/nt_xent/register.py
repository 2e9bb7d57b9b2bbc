"""torch.library registration of the nt_xent / info_nce ops ``torch.ops.fastssl.*``.

``{nt_xent,info_nce}_{fwd,bwd}`` and ``nt_xent_gathered_bwd`` are ``custom_op``s: the Triton path
(launch.py) for CUDA tensors, and a ``register_kernel("cpu")`` for CPU tensors (the blockwise path, or the
Triton kernels under the interpreter when the back end is "triton"). The blockwise path of CUDA tensors
goes through the ``*_native`` ``custom_op``s. Every op has a fake implementation; the forward ops have
``register_autograd``, so ``torch.compile(fullgraph=True)`` traces through the public functions.

Why ``custom_op`` and not ``triton_op``: torch.compile looks inside a ``triton_op`` and analyses each
Triton kernel's IR to find which inputs it writes; with Triton >= 3.7 that analysis can fail (runtime
scalars are dropped from the IR signature: pytorch#170049, fixed in pytorch PR #170808), and torch then
assumes every input is mutated (copies of every input; in some versions the kernel is dropped). A
``custom_op`` is opaque to torch.compile: it runs as registered, with the schema's ``mutates_args=()``
(every output freshly allocated by the op, no input written), so the ops depend on no version's analysis.
Same bits either way: only the registration changed (tests: opcheck, compile == eager).

The public functions pass the back end ("triton" or "native") as an argument, so the env var is read
outside the ops (at every call; torch.compile guards on it).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import custom_op

from fastssl.ops.nt_xent.cpu import (
    native_info_nce_bwd,
    native_info_nce_fwd,
    native_nt_xent_bwd,
    native_nt_xent_fwd,
    native_nt_xent_gathered_bwd,
)
from fastssl.ops.nt_xent.launch import (
    triton_info_nce_bwd,
    triton_info_nce_fwd,
    triton_nt_xent_bwd,
    triton_nt_xent_fwd,
    triton_nt_xent_gathered_bwd,
)
from fastssl.ops.nt_xent.ref import compute_dtype

# ---------------------------------------------------------------------------------------------------
# nt_xent: forward and backward on Z = [z1; z2]


@custom_op("fastssl::nt_xent_fwd_native", mutates_args=())
def nt_xent_fwd_native(z: Tensor, tau: Tensor, normalize: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Blockwise PyTorch forward (opaque to torch.compile, so its Python loop is never unrolled)."""
    return native_nt_xent_fwd(z, tau, normalize)


@nt_xent_fwd_native.register_fake
def _nt_xent_fwd_fake(z, tau, normalize):
    cd = compute_dtype(z.dtype)
    r = z.shape[0]
    return z.new_empty((), dtype=cd), z.new_empty(r, dtype=cd), z.new_empty(r, dtype=cd)


@custom_op("fastssl::nt_xent_bwd_native", mutates_args=())
def nt_xent_bwd_native(grad: Tensor, z: Tensor, tau: Tensor, lse: Tensor, rn: Tensor, normalize: bool,
                       need_dtau: bool) -> tuple[Tensor, Tensor]:
    return native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


@nt_xent_bwd_native.register_fake
def _nt_xent_bwd_fake(grad, z, tau, lse, rn, normalize, need_dtau):
    return torch.empty_like(z), torch.empty_like(tau)


@custom_op("fastssl::nt_xent_fwd", mutates_args=())
def nt_xent_fwd(z: Tensor, tau: Tensor, normalize: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """NT-Xent forward on Z = [z1; z2] (raw rows): (mean loss, per-row lse, per-row 1/|z|)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_fwd_native(z, tau, normalize)
    return triton_nt_xent_fwd(z, tau, normalize)


@custom_op("fastssl::nt_xent_bwd", mutates_args=())
def nt_xent_bwd(grad: Tensor, z: Tensor, tau: Tensor, lse: Tensor, rn: Tensor, normalize: bool, need_dtau: bool,
                backend: str) -> tuple[Tensor, Tensor]:
    """dLoss/dZ (input dtype) and dLoss/dtau (tau's shape; zeros unless need_dtau)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_bwd_native(grad, z, tau, lse, rn, normalize, need_dtau)
    return triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


@nt_xent_fwd.register_kernel("cpu")
def _(z, tau, normalize, backend):
    if backend == "triton":  # Triton on CPU tensors: the interpreter (tests)
        return triton_nt_xent_fwd(z, tau, normalize)
    return native_nt_xent_fwd(z, tau, normalize)


@nt_xent_bwd.register_kernel("cpu")
def _(grad, z, tau, lse, rn, normalize, need_dtau, backend):
    if backend == "triton":
        return triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)
    return native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau)


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


# ---------------------------------------------------------------------------------------------------
# gather=True backward without the keys' gradient (see gather.GatheredNtXent)


@custom_op("fastssl::nt_xent_gathered_bwd_native", mutates_args=())
def nt_xent_gathered_bwd_native(grads: Tensor, keys: Tensor, tau: Tensor, lse: Tensor, rnk: Tensor, offset: int,
                                normalize: bool, need_ps: bool) -> tuple[Tensor, Tensor]:
    return native_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


def _gathered_bwd_fake(grads, keys, lse, need_ps):
    m = keys.shape[0] // grads.shape[0]
    return keys.new_empty(m, keys.shape[1]), lse.new_empty(m if need_ps else 0)


@nt_xent_gathered_bwd_native.register_fake
def _(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    return _gathered_bwd_fake(grads, keys, lse, need_ps)


@custom_op("fastssl::nt_xent_gathered_bwd", mutates_args=())
def nt_xent_gathered_bwd(grads: Tensor, keys: Tensor, tau: Tensor, lse: Tensor, rnk: Tensor, offset: int,
                         normalize: bool, need_ps: bool, backend: str) -> tuple[Tensor, Tensor]:
    """Gathered NT-Xent: d(sum_r grads[r] L_r)/dz for this rank's m = 2nW / W rows keys[offset : offset + m].
    grads [W] every rank's upstream gradient, keys [2nW, D] every rank's raw rows, lse [2nW] every row's
    lse, rnk [2nW] their inverse norms. Returns ([m, D] in the keys' dtype, and with ``need_ps`` the
    rows' sum_j P_ij s_ij [m] (natural logits; else empty), for dL/dtau)."""
    if backend != "triton":
        return torch.ops.fastssl.nt_xent_gathered_bwd_native(grads, keys, tau, lse, rnk, offset, normalize, need_ps)
    return triton_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


@nt_xent_gathered_bwd.register_kernel("cpu")
def _(grads, keys, tau, lse, rnk, offset, normalize, need_ps, backend):
    fn = triton_nt_xent_gathered_bwd if backend == "triton" else native_nt_xent_gathered_bwd
    return fn(grads, keys, tau, lse, rnk, offset, normalize, need_ps)


# ---------------------------------------------------------------------------------------------------
# info_nce: queries against keys


@custom_op("fastssl::info_nce_fwd_native", mutates_args=())
def info_nce_fwd_native(q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, normalize: bool, self_offset: int,
                        exclude_self: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@info_nce_fwd_native.register_fake
def _info_nce_fwd_fake(q, k, pos, tau, normalize, self_offset, exclude_self):
    cd = compute_dtype(q.dtype)
    return (q.new_empty((), dtype=cd), q.new_empty(q.shape[0], dtype=cd), q.new_empty(q.shape[0], dtype=cd),
            q.new_empty(k.shape[0], dtype=cd))


@custom_op("fastssl::info_nce_bwd_native", mutates_args=())
def info_nce_bwd_native(grad: Tensor, q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, lse: Tensor, rnq: Tensor,
                        rnk: Tensor, normalize: bool, self_offset: int, exclude_self: bool, need_dq: bool,
                        need_dk: bool, need_dtau: bool) -> tuple[Tensor, Tensor, Tensor]:
    return native_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                               need_dk, need_dtau)


@info_nce_bwd_native.register_fake
def _info_nce_bwd_fake(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk,
                       need_dtau):
    dq = torch.empty_like(q) if need_dq else q.new_empty(0)
    dk = torch.empty_like(k) if need_dk else k.new_empty(0)
    return dq, dk, torch.empty_like(tau)


@custom_op("fastssl::info_nce_fwd", mutates_args=())
def info_nce_fwd(q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, normalize: bool, self_offset: int,
                 exclude_self: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """InfoNCE forward on raw queries/keys: (mean loss, per-row lse, 1/|q|, 1/|k|)."""
    if backend != "triton":
        return torch.ops.fastssl.info_nce_fwd_native(q, k, pos, tau, normalize, self_offset, exclude_self)
    return triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@custom_op("fastssl::info_nce_bwd", mutates_args=())
def info_nce_bwd(grad: Tensor, q: Tensor, k: Tensor, pos: Tensor, tau: Tensor, lse: Tensor, rnq: Tensor, rnk: Tensor,
                 normalize: bool, self_offset: int, exclude_self: bool, need_dq: bool, need_dk: bool,
                 need_dtau: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """(dq or empty, dk or empty, dtau or zeros)."""
    if backend != "triton":
        return torch.ops.fastssl.info_nce_bwd_native(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset,
                                                     exclude_self, need_dq, need_dk, need_dtau)
    return triton_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                               need_dk, need_dtau)


@info_nce_fwd.register_kernel("cpu")
def _(q, k, pos, tau, normalize, self_offset, exclude_self, backend):
    if backend == "triton":
        return triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)
    return native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self)


@info_nce_bwd.register_kernel("cpu")
def _(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk, need_dtau,
      backend):
    fn = triton_info_nce_bwd if backend == "triton" else native_info_nce_bwd
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
# fake implementations of the public ops (the same shapes as their native twins)


@nt_xent_fwd.register_fake
def _(z, tau, normalize, backend):
    return _nt_xent_fwd_fake(z, tau, normalize)


@nt_xent_bwd.register_fake
def _(grad, z, tau, lse, rn, normalize, need_dtau, backend):
    return _nt_xent_bwd_fake(grad, z, tau, lse, rn, normalize, need_dtau)


@nt_xent_gathered_bwd.register_fake
def _(grads, keys, tau, lse, rnk, offset, normalize, need_ps, backend):
    return _gathered_bwd_fake(grads, keys, lse, need_ps)


@info_nce_fwd.register_fake
def _(q, k, pos, tau, normalize, self_offset, exclude_self, backend):
    return _info_nce_fwd_fake(q, k, pos, tau, normalize, self_offset, exclude_self)


@info_nce_bwd.register_fake
def _(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq, need_dk, need_dtau,
      backend):
    return _info_nce_bwd_fake(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                              need_dk, need_dtau)
