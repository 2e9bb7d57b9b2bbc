"""torch.distributed helpers for the losses: all-gather with gradient.

``all_gather_with_grad(x)`` concatenates every rank's ``x`` along dim 0 (rank order). Its backward
sums the incoming gradients over ranks and hands each rank the slice of its own rows (a
reduce-scatter: ``reduce_scatter_tensor`` on NCCL, all-reduce + slice on gloo, which has no
reduce-scatter). So if every rank computes a loss ``L_r`` from the gathered tensor and calls
backward, rank r's ``x.grad`` is d(sum_r L_r)/dx_r: gradients flow back to the rows' owners.

Every rank must pass the same shape (same local batch, as DDP with ``drop_last`` gives).
Without an initialized process group, or with world size 1, it returns ``x`` unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """World size of the default process group; 1 when torch.distributed is not in use."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated on dim 0 (rank order), no gradient: one ``all_gather``."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ws, r, n = dist.get_world_size(), dist.get_rank(), ctx.rows
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((n, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(out, grad, op=dist.ReduceOp.SUM)
            return out
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        assert grad.shape[0] == ws * n
        return grad[r * n:(r + 1) * n].contiguous()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated on dim 0, differentiable (backward = reduce-scatter of sums)."""
    if world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)
