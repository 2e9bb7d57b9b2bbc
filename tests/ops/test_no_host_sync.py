"""The ops of a training step never synchronize the host with the GPU (a sync per step stalls the
launch queue and breaks CUDA-graph capture): an MAE step (random_masking, masked_patch_embed,
unshuffle, masked_patch_mse), a halves-style second mask draw and an NT-Xent loss, forward and
backward, under ``torch.cuda.set_sync_debug_mode("error")`` (any synchronizing call raises), in fp32
and under bf16 autocast with channels_last images as the trainer runs them. CUDA only (skipped here;
run by benches/gpu_check.sh)."""

import pytest
import torch

from fastssl.ops import masked_patch_embed, masked_patch_mse, nt_xent, random_masking, unshuffle


def _params(device, c=3, p=8, d=64, dd=32, n=16):
    g = torch.Generator().manual_seed(0)

    def param(*shape, scale=0.1):
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    return dict(weight=param(d, c, p, p), bias=param(d), pos=param(1, n, d), proj=param(d, dd), mask_token=param(dd),
                dpos=param(1, n, dd), head=param(dd, p * p * c))


def _step(images, w, p=8):
    """One MAE step plus a second (complementary-style) mask and an NT-Xent loss on pooled tokens."""
    b, n = images.shape[0], w["pos"].shape[1]
    ids_keep, ids_restore, mask = random_masking(b, n, 0.75, device=images.device)
    ids_keep2, _, _ = random_masking(b, n, 0.75, device=images.device)
    x = masked_patch_embed(images, w["weight"], w["bias"], w["pos"], p, ids_keep)
    x2 = masked_patch_embed(images, w["weight"], w["bias"], w["pos"], p, ids_keep2)
    y = unshuffle(x @ w["proj"], w["mask_token"], ids_restore, w["dpos"])
    loss = masked_patch_mse(y @ w["head"], images, mask, p) + nt_xent(x.mean(1), x2.mean(1), 0.2)
    loss.backward()
    return loss.detach()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_training_step_ops_do_not_sync(precision):
    dev = torch.device("cuda")
    images = torch.randn(8, 3, 32, 32, device=dev)
    w = _params(dev)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if precision != "fp32" else torch.autocast("cuda", enabled=False)
    if precision != "fp32":
        images = images.contiguous(memory_format=torch.channels_last)
    with ctx:
        _step(images, w)  # warm-up: Triton compiles and loads its kernels, cuBLAS creates its handles
    torch.cuda.synchronize()
    for t in w.values():
        t.grad = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        with ctx:
            loss = _step(images, w)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(torch.isfinite(loss)), loss
    assert all(t.grad is not None and bool(t.grad.abs().sum() > 0) for t in w.values())
