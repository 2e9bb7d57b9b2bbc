"""Gradient caching (--chunk-size, fastssl.gradcache): the chunked step against the unchunked one.

Unit tests (float64, in-process): equal gradients without batch statistics; the documented ghost-BN
semantics with BatchNorm (running stats once per chunk); replayed random draws; 2 gloo processes equal
1 process. End to end (``python -m fastssl.train`` in a subprocess): bit-exact resume after SIGKILL,
2 processes vs 1, bf16 autocast + channels_last, the NaN stop, one-line errors for bad input.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fastssl import train as train_cli
from fastssl.gradcache import Embedder, GradCache
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


def _method(arch="resnet18", batch_stats=True, seed=0):
    torch.manual_seed(seed)
    m = build_method("simclr", _cfg(arch))
    if not batch_stats:
        _no_batch_stats(m)
    return to_channels_last(m.double())


def _views(n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
            for _ in range(2)]


def _grads(m):
    return {k: p.grad.clone() for k, p in m.named_parameters()}


def _chunked_step(m, views, chunk, world_size=1, model=None):
    gc = GradCache(m, chunk, views[0].shape[0], world_size, torch.device("cpu"))
    model = model or Embedder(m)
    loss, metrics = gc.forward(model, views, None, contextlib.nullcontext())
    gc.backward(model, loss, contextlib.nullcontext())
    return loss, metrics


def _assert_same_grads(actual, ref):
    assert actual.keys() == ref.keys()
    for k in ref:
        assert_rel_close(actual[k], ref[k], dtype=torch.float64, name=k)


@pytest.mark.parametrize("arch,chunk", [("resnet18", 4), ("resnet18", 1), ("resnet18", 12), ("vit_tiny", 3)])
def test_chunked_gradient_equals_unchunked_without_batch_stats(arch, chunk):
    m = _method(arch, batch_stats=False)
    m2 = copy.deepcopy(m)
    views = _views()
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


def test_batchnorm_is_per_chunk_and_running_stats_update_once_per_chunk():
    m = _method()
    m2 = copy.deepcopy(m)
    views = _views()
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
    m3 = copy.deepcopy(_method())
    full, _ = m3(views, None)
    assert abs(float(full) - float(loss)) > 1e-3


def test_random_draws_are_replayed_and_consumed_once():
    """A projector with dropout: pass (c) must draw the same masks as pass (a), else the gradient
    would not be that of the loss (a) computed. Reference: chunk-by-chunk autograd forwards from the
    same generator state."""
    m = _method(batch_stats=False)
    m.projector = nn.Sequential(nn.Dropout(0.3), m.projector)
    m2 = copy.deepcopy(m)
    views = _views()
    torch.manual_seed(123)
    loss = _ghost_bn_reference(m, views, 4)
    after_ref = torch.get_rng_state()
    torch.manual_seed(123)
    loss2, _ = _chunked_step(m2, views, 4)
    assert torch.equal(torch.get_rng_state(), after_ref)
    assert_rel_close(loss2.detach(), loss.detach(), dtype=torch.float64, name="loss")
    _assert_same_grads(_grads(m2), _grads(m))


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


# --- the command line ---------------------------------------------------------------------------------

def _run(args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}, timeout=600, **kw)


@pytest.mark.parametrize("extra,message", [
    (["--chunk-size", "0"], "argument --chunk-size: must be >= 1, got 0"),
    (["--chunk-size", "-3"], "argument --chunk-size: must be >= 1, got -3"),
    (["--chunk-size", "6"], "--chunk-size 6 does not divide --batch-size 16 (the global batch)"),
    (["--chunk-size", "32"], "--chunk-size 32 does not divide --batch-size 16 (the global batch)"),
    (["--method", "rotation", "--chunk-size", "4"], "--chunk-size: method 'rotation' cannot be chunked"),
])
def test_bad_chunk_size_is_a_one_line_error(extra, message, tiny_args, tiny_data, tmp_path):
    if extra[0] == "--method":  # another method: its own flags
        args = ["--data", str(tiny_data), "--width", "8", "--image-size", "16", "--batch-size", "16",
                "--workers", "1", "--quiet", "--out", str(tmp_path / "run")]
    else:
        args = tiny_args(tmp_path / "run")
    r = _run(args + extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastssl.train: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


def test_chunk_size_must_divide_the_per_process_batch(tiny_args, tmp_path):
    """B=16 over 2 processes is 8 per process: C=16 divides the global batch, not the per-process one."""
    from fastssl.errors import ConfigError
    from fastssl.parallel import DistInfo
    from fastssl.trainer import Trainer

    cfg = train_cli.parse_config(tiny_args(tmp_path / "run", "--chunk-size", "16"))
    with pytest.raises(ConfigError, match=r"--chunk-size 16 does not divide the per-process batch 8 \(--batch-size 16 "
                                          r"is the global batch over 2 processes\)"):
        Trainer(cfg, DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu")))
    assert not (tmp_path / "run").exists()


def _losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_resume_after_sigkill_is_bit_exact(tiny_args, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    flags = ("--eval", "none", "--epochs", "1", "--chunk-size", "4")
    ra = _run(tiny_args(a, *flags))
    assert ra.returncode == 0, ra.stderr
    rb = _run(tiny_args(b, *flags, "--ckpt-every", "2"), env={"FASTSSL_DEBUG_SIGKILL_AT_STEP": "3"})
    assert rb.returncode == -signal.SIGKILL, rb.stderr
    assert torch.load(b / "last.pt", weights_only=True)["state"]["global_step"] == 2
    rc = _run(tiny_args(b, *flags, "--ckpt-every", "2", "--resume", "auto"))
    assert rc.returncode == 0 and "resumed from" in rc.stderr, rc.stderr
    sa, sb = (torch.load(x / "last.pt", weights_only=True) for x in (a, b))
    for part in ("model", "optimizer"):
        fa, fb = (torch.utils._pytree.tree_flatten(s[part])[0] for s in (sa, sb))
        assert len(fa) == len(fb)
        for x, y in zip(fa, fb):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, part
    assert sa["model"]["backbone.bn1.num_batches_tracked"] == 6 * 4  # 6 steps x 4 chunks
    la, lb = _losses(a), _losses(b)
    assert la == [x for i, x in enumerate(lb) if i != 2]  # step 3 ran twice (killed after it), same value


def test_bf16_channels_last_and_nan_stop(tiny_args, tmp_path, monkeypatch, capsys):
    """In-process runs: bf16 autocast over chunks trains (finite losses); a NaN loss at step 3 stops
    before the update with the last good checkpoint (step 2) intact."""
    from fastssl.methods import simclr

    out = tmp_path / "bf16"
    assert train_cli.main(tiny_args(out, "--eval", "none", "--epochs", "1", "--chunk-size", "8",
                                    "--precision", "bf16")) == 0
    losses = _losses(out)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))

    calls = {"n": 0}
    real = simclr.nt_xent

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(simclr, "nt_xent", flaky)
    out = tmp_path / "nan"
    capsys.readouterr()
    assert train_cli.main(tiny_args(out, "--ckpt-every", "2", "--eval", "none", "--chunk-size", "4")) == 1
    err = capsys.readouterr().err
    assert "loss is nan" in err and "stopping before the update" in err
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["state"]["global_step"] == 2 and calls["n"] == 3  # the loss is computed once per step


@pytest.mark.slow
def test_two_processes_match_one_process_end_to_end(tiny_args, tmp_path):
    """torchrun, 2 CPU processes with 8 images each in one chunk of 8, against 1 process with one chunk
    of 16: the same ghost batch (global BN over the 16 images) and the same loss curve."""
    fixed = json.dumps({"scale": [1, 1], "ratio": [1, 1], "flip_p": 0, "jitter_p": 0, "gray_p": 0,
                        "blur_p": [0, 0], "solarize_p": [0, 0]})
    common = ["--eval", "none", "--epochs", "1", "--recipe-options", fixed]
    one = _run(tiny_args(tmp_path / "one", *common, "--chunk-size", "16"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29583", "-m", "fastssl.train",
                          *tiny_args(tmp_path / "two", *common, "--chunk-size", "8")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 6
    assert torch.allclose(torch.tensor(l1), torch.tensor(l2), rtol=1e-3, atol=1e-4), (l1, l2)


@pytest.mark.slow
def test_compile_with_chunks_runs(tiny_args, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(tiny_args(out, "--compile", "--epochs", "1", "--eval", "none", "--chunk-size", "8")) == 0
    losses = _losses(out)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
