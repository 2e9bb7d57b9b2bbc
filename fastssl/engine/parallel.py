"""Multi-process training: process-group set-up from torchrun's environment, and global batch norm.

``torchrun --nproc_per_node N -m fastssl.train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; we use NCCL
on GPUs and gloo on CPUs. SimCLR needs batch statistics over the global batch (otherwise each rank's
BN leaks which samples share a device): on CUDA that is torch's SyncBatchNorm; torch's SyncBatchNorm
refuses CPU tensors, so on CPU :class:`GlobalBatchNorm` does the same with an autograd all-reduce.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from fastssl.ops.distributed import rank, world_size

__all__ = ["DistInfo", "GlobalBatchNorm", "convert_global_bn", "rank", "setup_distributed", "world_size"]


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistInfo:
    """Initialize the default process group when launched by torchrun (WORLD_SIZE > 1)."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if ws > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank(), world_size(), local, dev)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d or 2d input) whose training statistics cover every rank's batch: a SyncBN that
    also runs on CPU/gloo. Same parameters, buffers and state-dict keys as nn.BatchNorm1d/2d;
    identical to them in eval mode or without a process group.
    """

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        stats = dist_nn.all_reduce(stats)  # differentiable: gradients flow through the global stats
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * n / (n - 1).clamp_min(1), alpha=m)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm layers by their global-statistics version (no-op in a single process)."""
    if world_size() == 1:
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_bn(model)


def _swap_bn(module: nn.Module) -> nn.Module:
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap_bn(child))
    return module
