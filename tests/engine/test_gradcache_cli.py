"""``python -m fastssl.train --chunk-size`` end to end (gradient caching, fastssl.engine.gradcache): one-line
errors for bad input, bit-exact resume after SIGKILL, bf16 autocast + channels_last, the NaN stop,
torchrun with 2 gloo processes against 1 process, --compile. The unit tests are in tests/test_gradcache.py.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import nan_loss_at_call, run_train
from helpers import step_losses as _losses

from fastssl.cli import train as train_cli

_run = functools.partial(run_train, timeout=600)


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
    from fastssl.base.errors import ConfigError
    from fastssl.engine.parallel import DistInfo
    from fastssl.engine.trainer import Trainer

    cfg = train_cli.parse_config(tiny_args(tmp_path / "run", "--chunk-size", "16"))
    with pytest.raises(ConfigError, match=r"--chunk-size 16 does not divide the per-process batch 8 \(--batch-size 16 "
                                          r"is the global batch over 2 processes\)"):
        Trainer(cfg, DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu")))
    assert not (tmp_path / "run").exists()


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
    out = tmp_path / "bf16"
    assert train_cli.main(tiny_args(out, "--eval", "none", "--epochs", "1", "--chunk-size", "8",
                                    "--precision", "bf16")) == 0
    losses = _losses(out)
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))

    calls = nan_loss_at_call(monkeypatch, 3)
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
