"""Triton path of nt_xent / info_nce: pad, allocate, run the launch plans of plans.py under the inputs'
device, and finish on the host (mean loss, dtau, unpad). Each ``triton_*`` function is the Triton
kernel of the op of the same name (register.py); on CPU tensors it runs under TRITON_INTERPRET=1."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.ops.nt_xent.plans import arch_of, fwd_plan, info_nce_bwd_plan, nt_xent_bwd_plan, rnorm_plan


def _launch(plan: list, x: Tensor) -> None:
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:  # the launch goes to the current device: make it the inputs' (cuda:1 works)
        for kernel, grid, args, kw in plan:
            kernel[grid](*args, **kw)  # inside a custom_op (register.py): a plain launch


def pad16(x: Tensor) -> Tensor:
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
    _launch(rnorm_plan(x, rn, arch_of(x)), x)
    return rn


def _triton_forward(q, k, pos, tau, normalize, self_offset, exclude_self, pos_half):
    """Rows' lse and loss, plus the inverse norms (the backward reuses them)."""
    m = q.shape[0]
    q, k = pad16(q), (None if k is q else pad16(k))
    k = q if k is None else k
    rnq = _rnorm(q, normalize)
    rnk = rnq.clone() if k is q else _rnorm(k, normalize)  # op outputs may not alias each other
    lse = torch.empty(m, dtype=torch.float32, device=q.device)
    loss = torch.empty(m, dtype=torch.float32, device=q.device)
    _launch(fwd_plan(q, k, rnq, rnk, pos, tau, lse, loss, self_offset=self_offset, exclude_self=exclude_self,
                     pos_half=pos_half, normalize=normalize, arch=arch_of(q)), q)
    return loss.mean(), lse, rnq, rnk


def triton_nt_xent_fwd(z, tau, normalize):
    """(mean loss, per-row lse, per-row 1/|z|) of Z = [z1; z2] (raw rows)."""
    loss, lse, rn, _ = _triton_forward(z, z, z.new_empty(0, dtype=torch.int64), tau.float(), normalize, 0, True, True)
    return loss, lse, rn


def _rn_max(rn: Tensor, x: Tensor, normalize: bool) -> Tensor:
    """max_j 1/|x_j| for the fp16 G scale (one small reduction, fp16 only; else unused by the kernel)."""
    return rn.amax().reshape(1) if (normalize and x.dtype == torch.float16) else rn


def triton_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau):
    """(dLoss/dZ in z's dtype, dLoss/dtau or zeros)."""
    d = z.shape[1]
    z = pad16(z)
    dz = torch.empty_like(z)
    rad = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
    tau32 = tau.float()
    _launch(nt_xent_bwd_plan(z, rn, _rn_max(rn, z, normalize), lse, tau32, grad.float(), dz, rad,
                             normalize=normalize, arch=arch_of(z)), z)
    dtau = (-rad.sum() / (2 * tau32)).to(tau.dtype) if need_dtau else torch.zeros_like(tau)
    return _unpad(dz, d), dtau


def triton_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    """gather=True backward of this rank's rows keys[offset : offset + m] (see the nt_xent_gathered_bwd op)."""
    m = keys.shape[0] // grads.shape[0]
    d = keys.shape[1]
    keys = pad16(keys)
    g = grads.float()
    # weights in [-1, 1] keep |G| <= 2 (the fp16 G scale's assumption); their scale goes to the epilogue
    gmax = g.abs().amax().reshape(1)
    gmax = torch.where(gmax > 0, gmax, torch.ones_like(gmax))
    wcol = (g / gmax).repeat_interleave(m)
    dz = keys.new_empty(m, keys.shape[1])
    rad = torch.empty(m, dtype=torch.float32, device=keys.device)
    _launch(nt_xent_bwd_plan(keys, rnk, _rn_max(rnk, keys, normalize), lse, tau.float(), gmax, dz, rad,
                             normalize=normalize, arch=arch_of(keys), m=m, self_offset=offset, wcol=wcol,
                             need_ps=need_ps), keys)
    return _unpad(dz, d), (rad if need_ps else rad.new_empty(0))


def triton_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self):
    """(mean loss, per-row lse, 1/|q|, 1/|k|)."""
    return _triton_forward(q, k, pos, tau.float(), normalize, self_offset, exclude_self, False)


def triton_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                        need_dk, need_dtau):
    """(dq or empty, dk or empty, dtau or zeros)."""
    tau32 = tau.float()
    d = q.shape[1]
    q, k = pad16(q), (None if k is q else pad16(k))
    k = q if k is None else k
    want_dq = need_dq or need_dtau
    dq = torch.empty_like(q) if want_dq else None
    dk = torch.empty_like(k) if need_dk else None
    rad = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    _launch(info_nce_bwd_plan(q, k, rnq, rnk, _rn_max(rnq, q, normalize), _rn_max(rnk, k, normalize), pos, lse, tau32,
                              grad.float(), dq, dk, rad, self_offset=self_offset, exclude_self=exclude_self,
                              normalize=normalize, arch=arch_of(q)), q)
    dtau = (-rad.sum() / tau32).to(tau.dtype) if need_dtau else torch.zeros_like(tau)
    dq = _unpad(dq, d) if need_dq else q.new_empty(0)
    return dq, _unpad(dk, d) if dk is not None else k.new_empty(0), dtau

