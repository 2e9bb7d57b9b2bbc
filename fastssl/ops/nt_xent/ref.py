"""The spec: full-matrix references of nt_xent / info_nce in plain PyTorch, computed in the input dtype
(O(N^2) memory; ``FASTSSL_BACKEND=ref`` runs them), and the two conventions every path shares: which
row is a row's positive, and the dtype the fused paths compute and return in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fastssl.ops.distributed import all_gather_with_grad, rank, world_size
from fastssl.ops.nt_xent.checks import check_info_nce, check_pair, check_temperature


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, fp64 for fp64 inputs: the fused paths' accumulation and result dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def nt_xent_positives(rows: int, offset: int, device) -> Tensor:
    """Global index of the positive of each of ``rows`` local rows [z1_r; z2_r] starting at ``offset``."""
    return offset + (torch.arange(rows, device=device) + rows // 2) % rows


def info_nce_ref_core(q, k, pos, temperature, normalize, self_offset):
    """Unchecked InfoNCE over the [M, Nk] matrix; ``self_offset``: key i + self_offset is not a candidate
    for query i (None: every key is)."""
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
    check_info_nce(query, keys, positive_index, exclude_self)
    tau = check_temperature(temperature)
    return info_nce_ref_core(query, keys, positive_index, tau, normalize, 0 if exclude_self else None)


def nt_xent_ref(z1, z2, temperature=0.1, normalize=True, gather=False):
    """Plain-PyTorch spec of :func:`nt_xent` (builds the 2N x 2N matrix); result in the input dtype."""
    check_pair(z1, z2)
    tau = check_temperature(temperature)
    z = torch.cat([z1, z2], dim=0)
    ws = world_size() if gather else 1
    if ws == 1:
        return info_nce_ref_core(z, z, nt_xent_positives(z.shape[0], 0, z.device), tau, normalize, 0)
    offset = rank() * z.shape[0]
    keys = all_gather_with_grad(z)
    pos = nt_xent_positives(z.shape[0], offset, z.device)
    return info_nce_ref_core(z, keys, pos, tau, normalize, offset)
