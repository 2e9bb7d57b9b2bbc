"""nt_xent(gather=True) under torch.distributed: the one-pass backward (``GatheredNtXent``).

Every rank scores its local 2n rows [z1_r; z2_r] against all ranks' rows (all-gathered) and returns its
LOCAL contribution; the forward also all-gathers the per-row lse (2nW floats), so that the backward
computes each rank's own rows' complete gradient in one pass (the ``nt_xent_gathered_bwd`` op) and only
all-gathers the W upstream gradients: no dk pass and no [2nW, D] reduce-scatter.
"""

from __future__ import annotations

import torch

from fastssl.ops.distributed import all_gather, rank
from fastssl.ops.nt_xent import register  # noqa: F401  (registers the torch.ops.fastssl ops used here)
from fastssl.ops.nt_xent.ref import nt_xent_positives


class GatheredNtXent(torch.autograd.Function):
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
        pos = nt_xent_positives(m, offset, z.device)
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

