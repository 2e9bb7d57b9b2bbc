"""Gradient caching (--chunk-size, fastssl.engine.gradcache): the chunked step against the unchunked one, on
CPU and CUDA (float64 unless said otherwise): equal gradients without batch statistics; the documented
ghost-BN semantics with BatchNorm (running stats once per chunk); replayed random draws (CPU and CUDA
generators); bf16 autocast; 2 gloo processes equal the unchunked DDP step and 1 process. Outside
tests/engine on purpose: no DALI needed, so the CUDA cases run in benches/gpu_check.sh. The command
line (resume, errors, NaN stop, torchrun) is tested in tests/engine/test_gradcache_cli.py.
"""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import exit_spawned_worker
from torch import nn

from fastssl.cli import train as train_cli
from fastssl.engine.gradcache import Embedder, GradCache
from fastssl.methods import build_method
from fastssl.models import to_channels_last
from tests.helpers import assert_rel_close

B = 12  # images per step (per process in the unit tests)


def _cfg(arch="resnet18"):
    return train_cli.parse_config(["--method", "simclr", "--arch", arch, "--width", "4", "--image-size", "16",
                                   "--batch-size", str(B), "--proj-hidden", "16", "--proj-dim", "8",
                                   "--temperature", "0.5"])


def _no_batch_stats(module: nn.Module) -> nn.Module:
    """BatchNorm -> GroupNorm(1 group): per-sample statistics, so a chunk's output does not depend on
    the other images."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.GroupNorm(1, child.num_features))
        else:
            _no_batch_stats(child)
    return module


def _method(arch="resnet18", batch_stats=True, seed=0, device="cpu", dtype=torch.float64):
    torch.manual_seed(seed)
    m = build_method("simclr", _cfg(arch))
    if not batch_stats:
        _no_batch_stats(m)
    return to_channels_last(m.to(device, dtype))


def _views(n=B, seed=1, device="cpu", dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g, dtype=dtype).to(device).contiguous(memory_format=torch.channels_last)
            for _ in range(2)]


def _grads(m):
    return {k: p.grad.clone() for k, p in m.named_parameters()}


def _chunked_step(m, views, chunk, world_size=1, model=None, autocast=None):
    gc = GradCache(m, chunk, views[0].shape[0], world_size, views[0].device)
    model = model or Embedder(m)
    autocast = autocast or contextlib.nullcontext()
    loss, metrics = gc.forward(model, views, None, autocast)
    gc.backward(model, loss, autocast)
    return loss, metrics


def _assert_same_grads(actual, ref, dtype=torch.float64, rtol=None):
    assert actual.keys() == ref.keys()
    for k in ref:
        assert_rel_close(actual[k], ref[k], dtype=dtype, rtol=rtol, name=k)


@pytest.mark.parametrize("arch,chunk", [("resnet18", 4), ("resnet18", 1), ("resnet18", 12), ("vit_tiny", 3)])
def test_chunked_gradient_equals_unchunked_without_batch_stats(arch, chunk, device):
    m = _method(arch, batch_stats=False, device=device)
    m2 = copy.deepcopy(m)
    views = _views(device=device)
    loss, metrics = m(views, None)
    loss.backward()
    loss2, metrics2 = _chunked_step(m2, views, chunk)
    assert_rel_close(loss2.detach(), loss.detach(), dtype=torch.float64, name="loss")
    assert_rel_close(metrics2["pos_cos"], metrics["pos_cos"], dtype=torch.float64, name="pos_cos")
    _assert_same_grads(_grads(m2), _grads(m))


def test_forward_is_embed_then_loss():
    m = _method()
    views = _views()
    state = copy.deepcopy(m.state_dict())
    loss, _ = m(views, None)
    m.load_state_dict(state)
    loss2, _ = m.loss_from_embeddings(m.embed(views))
    assert torch.equal(loss, loss2)


def _ghost_bn_reference(m, views, chunk):
    """The documented semantics: one autograd forward per chunk (batch norm over that chunk's 2C views,
    running stats updated once per chunk), the loss over all the embeddings, one backward."""
    zs = [m.embed([v[i:i + chunk] for v in views]) for i in range(0, views[0].shape[0], chunk)]
    z = torch.cat([zc.unflatten(0, (2, chunk)) for zc in zs], dim=1).flatten(0, 1)
    loss, _ = m.loss_from_embeddings(z)
    loss.backward()
    return loss


def test_batchnorm_is_per_chunk_and_running_stats_update_once_per_chunk(device):
    m = _method(device=device)
    m2 = copy.deepcopy(m)
    views = _views(device=device)
    loss = _ghost_bn_reference(m, views, 4)
    loss2, _ = _chunked_step(m2, views, 4)
    assert_rel_close(loss2.detach(), loss.detach(), dtype=torch.float64, name="loss")
    _assert_same_grads(_grads(m2), _grads(m))
    bufs, bufs2 = dict(m.named_buffers()), dict(m2.named_buffers())
    assert bufs["backbone.bn1.num_batches_tracked"] == 3  # 12 images / C=4: once per chunk, not twice
    for k in bufs:
        if bufs[k].is_floating_point():
            assert_rel_close(bufs2[k], bufs[k], dtype=torch.float64, name=k)
        else:
            assert torch.equal(bufs2[k], bufs[k]), k
    # And it is not the full-batch BN (which the unchunked step computes): the difference is real.
    m3 = _method(device=device)
    full, _ = m3(views, None)
    assert abs(float(full.detach()) - float(loss.detach())) > 1e-3


def test_random_draws_are_replayed_and_consumed_once(device):
    """A projector with dropout: pass (c) must draw the same masks as pass (a), else the gradient
    would not be that of the loss (a) computed. Reference: chunk-by-chunk autograd forwards from the
    same generator state (the CPU one, and on CUDA the device's)."""
    m = _method(batch_stats=False, device=device)
    m.projector = nn.Sequential(nn.Dropout(0.3), m.projector)
    m2 = copy.deepcopy(m)
    views = _views(device=device)
    state = (lambda: torch.cuda.get_rng_state(device)) if device.type == "cuda" else torch.get_rng_state
    torch.manual_seed(123)
    loss = _ghost_bn_reference(m, views, 4)
    after_ref = state()
    torch.manual_seed(123)
    loss2, _ = _chunked_step(m2, views, 4)
    assert torch.equal(state(), after_ref)
    assert_rel_close(loss2.detach(), loss.detach(), dtype=torch.float64, name="loss")
    _assert_same_grads(_grads(m2), _grads(m))


def test_bf16_autocast_matches_the_chunk_by_chunk_reference(device):
    """Under bf16 autocast both passes run in bf16 (a's embeddings are what c differentiates); the
    reference is the documented semantics computed chunk by chunk under the same autocast (fp32
    weights). Bound: bf16's relative tolerance; on CPU the two use the same kernels and agree closely."""
    m = _method(device=device, dtype=torch.float32)
    m2 = copy.deepcopy(m)
    views = _views(device=device, dtype=torch.float32)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    with amp:
        loss = _ghost_bn_reference(m, views, 4)
    loss2, _ = _chunked_step(m2, views, 4, autocast=torch.autocast(device.type, dtype=torch.bfloat16))
    assert torch.isfinite(loss2)
    assert_rel_close(loss2.detach(), loss.detach(), dtype=torch.bfloat16, name="loss")
    _assert_same_grads(_grads(m2), _grads(m), dtype=torch.bfloat16, rtol=3e-2)


def _ddp_worker(rank, port, chunk, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        views = [v[rank * B:(rank + 1) * B] for v in _views(2 * B)]
        m = _method(batch_stats=False)  # built after init_process_group: gather=True
        assert m.gather
        ddp_unchunked = nn.parallel.DistributedDataParallel(m)  # kept alive until its backward has synced
        loss, _ = ddp_unchunked(views, None)
        loss.backward()
        m2 = _method(batch_stats=False)
        ddp = nn.parallel.DistributedDataParallel(Embedder(m2))
        loss2, _ = _chunked_step(m2, views, chunk, world_size=2, model=ddp)
        out[rank] = (loss.item(), loss2.item(), _grads(m), _grads(m2))
    finally:
        dist.destroy_process_group()
    exit_spawned_worker()  # teardown can abort after a pass (tests/helpers.py)


def test_two_gloo_processes_equal_the_unchunked_ddp_step_and_one_process():
    """2 ranks x 12 images in chunks of 4 (DDP no_sync for the first chunks, gather=True) against the
    unchunked DDP step (float64 rounding), and against one process, unchunked, over the 24 images
    (mean of the ranks' losses; DDP-averaged gradients). The last comparison has a looser bound: summing
    over 2 ranks instead of 1 batch reorders sums that cancel (e.g. the last bias's gradient, a sum of
    rows whose total is ~1e-5 of its terms); the unchunked DDP step itself is 7e-6 x scale off there."""
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(29581, 4, out), nprocs=2)
    m = _method(batch_stats=False)
    loss, _ = m(_views(2 * B), None)
    loss.backward()
    ref = _grads(m)
    for r in (0, 1):
        loss_ddp, loss_chunked, grads_ddp, grads_chunked = out[r]
        _assert_same_grads(grads_chunked, grads_ddp)
        for k in ref:
            assert_rel_close(grads_chunked[k], ref[k], dtype=torch.float64, rtol=1e-4, name=k)
    for i in (0, 1):
        assert_rel_close(torch.tensor((out[0][i] + out[1][i]) / 2, dtype=torch.float64), loss.detach(),
                         dtype=torch.float64, name="loss")


