"""GlobalBatchNorm: 2 gloo processes, each with half the batch, equal one BatchNorm over the whole."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import exit_spawned_worker
from torch import nn

from fastssl.engine.parallel import GlobalBatchNorm, convert_global_bn


def _worker(rank, port, x, w, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        bn = convert_global_bn(nn.Sequential(nn.BatchNorm2d(x.shape[1])), torch.device("cpu"))
        assert isinstance(bn[0], GlobalBatchNorm)
        xr = x.chunk(2)[rank].clone().requires_grad_(True)
        y = bn(xr)
        (y * w.chunk(2)[rank]).sum().backward()
        out[rank] = (y.detach(), xr.grad, bn[0].running_mean.clone(), bn[0].running_var.clone(),
                     bn[0].weight.grad.clone())
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()  # teardown can abort after a pass (tests/helpers.py)


def test_global_bn_equals_full_batch_bn():
    torch.manual_seed(0)
    x, w = torch.randn(6, 3, 5, 4) * 2 + 1, torch.randn(6, 3, 5, 4)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(29571, x, w, out), nprocs=2)
    ref = nn.BatchNorm2d(3)
    xf = x.clone().requires_grad_(True)
    y = ref(xf)
    (y * w).sum().backward()
    y2 = torch.cat([out[0][0], out[1][0]])
    g2 = torch.cat([out[0][1], out[1][1]])
    assert torch.allclose(y2, y.detach(), atol=1e-5)
    assert torch.allclose(g2, xf.grad, atol=1e-5)
    for r in (0, 1):
        assert torch.allclose(out[r][2], ref.running_mean, atol=1e-6)
        assert torch.allclose(out[r][3], ref.running_var, atol=1e-5)
    # Each rank holds the gradient of its own half; DDP sums (averages) them: the sum is the full one.
    assert torch.allclose(out[0][4] + out[1][4], ref.weight.grad, atol=1e-4)


def test_single_process_is_plain_bn():
    m = nn.Sequential(nn.BatchNorm2d(3))
    assert convert_global_bn(m, torch.device("cpu")) is m and type(m[0]) is nn.BatchNorm2d
