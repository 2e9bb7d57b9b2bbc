"""Blockwise PyTorch path of nt_xent / info_nce: CPU tensors, and CUDA tensors the Triton kernels do not
take (fp64, D > 512, fp32 with D > 128).

The same algorithm as the kernels: row blocks of at most ``CPU_BLOCK_ELEMS`` similarities against all
keys (exact logsumexp per block, matmuls), so memory stays O(N*D + CPU_BLOCK_ELEMS); the backward
recomputes the similarity blocks from the per-row lse. Computes in fp32 throughout (fp64 for fp64
inputs), also inside a torch.autocast region (autocast is off inside). Deterministic: fixed block order,
no atomics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastssl.ops.nt_xent.ref import compute_dtype, nt_xent_positives

# Blockwise path: at most this many similarities per row block (16 MB in fp32); the backward holds
# three such temporaries, so the extra memory stays ~50 MB whatever N is.
CPU_BLOCK_ELEMS = 1 << 22
NORM_EPS = 1e-12  # F.normalize's eps


def _row_block(nk: int) -> int:
    return max(1, CPU_BLOCK_ELEMS // max(nk, 1))


def _unit_rows(x: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(u, r): rows in the compute dtype, normalized when asked, and their inverse norms."""
    xf = x.to(compute_dtype(x.dtype))
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


# The op kernels (register.py): same arguments and results as the ops of the same name.


def native_nt_xent_fwd(z, tau, normalize):
    """(mean loss, per-row lse, per-row 1/|z|) of Z = [z1; z2] (raw rows)."""
    with _no_autocast(z):
        u, rn = _unit_rows(z, normalize)
        pos = nt_xent_positives(z.shape[0], 0, z.device)
        lse, loss = _blockwise_forward(u, u, pos, tau, 0)
        return loss.mean(), lse, rn


def native_nt_xent_bwd(grad, z, tau, lse, rn, normalize, need_dtau):
    """(dLoss/dZ in z's dtype, dLoss/dtau or zeros)."""
    with _no_autocast(z):
        u = z.to(rn.dtype) * rn[:, None] if normalize else z.to(rn.dtype)
        gu = _blockwise_nt_xent_backward(u, lse, tau).mul_(grad)
        dz, rad = _normalize_backward(gu, u, rn, normalize)
        dtau = -rad.sum() / (2 * tau) if need_dtau else torch.zeros_like(tau)
        return dz.to(z.dtype), dtau


def native_info_nce_fwd(q, k, pos, tau, normalize, self_offset, exclude_self):
    """(mean loss, per-row lse, 1/|q|, 1/|k|)."""
    with _no_autocast(q):
        u, rnq = _unit_rows(q, normalize)
        v, rnk = _unit_rows(k, normalize)
        lse, loss = _blockwise_forward(u, v, pos, tau, self_offset if exclude_self else None)
        return loss.mean(), lse, rnq, rnk


def native_info_nce_bwd(grad, q, k, pos, tau, lse, rnq, rnk, normalize, self_offset, exclude_self, need_dq,
                        need_dk, need_dtau):
    """(dq or empty, dk or empty, dtau or zeros) of the info_nce_bwd op."""
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


def native_nt_xent_gathered_bwd(grads, keys, tau, lse, rnk, offset, normalize, need_ps):
    """gather=True backward of this rank's rows keys[offset : offset + m] (see the nt_xent_gathered_bwd op)."""
    with _no_autocast(keys):
        m = keys.shape[0] // grads.shape[0]
        v = keys.to(rnk.dtype) * rnk[:, None] if normalize else keys.to(rnk.dtype)
        w = grads.to(rnk.dtype).repeat_interleave(m)
        gu, ps = _blockwise_nt_xent_gathered_backward(v, offset, m, lse, tau, w, need_ps)
        dz, _ = _normalize_backward(gu, v[offset:offset + m], rnk[offset:offset + m], normalize)
        return dz.to(keys.dtype), (ps if need_ps else lse.new_empty(0))

