"""Shared test helpers: the dtype tolerance table and the float64-reference comparison; the scaffolding
of the CLI and method tests (a ``python -m fastssl.train`` subprocess, a run's step losses, a NaN loss
injected into SimCLR, the picture hook under reseeded global RNGs).

The rule (DESIGN.md): a fused op's error against the float64 reference may be at most 2x the error
of the same reference computed in the op's own dtype, plus the small absolute floor of the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

# One table for the whole suite: floors for comparisons against a float64 reference.
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=8e-3, rtol=8e-3),
}


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    if a64.shape != b64.shape:
        raise AssertionError(f"shape mismatch: {tuple(a64.shape)} vs {tuple(b64.shape)}")
    both_nan = a64.isnan() & b64.isnan()
    if (a64.isnan() ^ b64.isnan()).any():
        raise AssertionError("NaN pattern differs")
    diff = (a64 - b64).abs().masked_fill(both_nan, 0)
    return float(diff.max()) if diff.numel() else 0.0


def assert_close_to_ref(actual, ref64, ref_lowp=None, dtype=None, name="value"):
    """``actual`` (any dtype) against the float64 reference ``ref64``.

    Bound: 2 * |ref_lowp - ref64|_max (the reference's own error in the op's dtype, when given)
    + atol + rtol * |ref64|_max from TOL[dtype]. ``dtype`` defaults to ``actual.dtype``.
    """
    dtype = dtype or actual.dtype
    tol = TOL[dtype]
    scale = float(ref64.detach().double().abs().max()) if ref64.numel() else 0.0
    bound = tol["atol"] + tol["rtol"] * scale
    if ref_lowp is not None:
        bound += 2 * max_abs_err(ref_lowp, ref64)
    err = max_abs_err(actual, ref64)
    assert err <= bound, f"{name}: max abs error {err:.3e} > bound {bound:.3e} ({dtype})"
    return err


def assert_rel_close(actual, ref64, ref_lowp=None, dtype=None, name="value", rtol=None, resolution=0.0):
    """``actual`` against the float64 reference with a bound relative to the reference's scale.

    Bound: rtol * max|ref64| (rtol from TOL[dtype] unless given) + 2 * max|ref_lowp - ref64| (the
    reference's own error in the op's dtype, when given). The bound itself must stay below half the
    scale: a bound that an all-zero result would pass proves nothing, and fails the test. An
    all-zero reference gets TOL[dtype]['atol']. ``resolution``: the absolute error fp32 arithmetic
    cannot avoid on this problem (e.g. a saturated loss whose gradient lies below it); a reference
    whose scale is under it is checked against it (err <= resolution) instead.
    """
    dtype = dtype or actual.dtype
    rtol = TOL[dtype]["rtol"] if rtol is None else rtol
    scale = float(ref64.detach().double().abs().max()) if ref64.numel() else 0.0
    if scale == 0:  # an exactly-zero reference (e.g. one candidate per row): the absolute floor
        err = max_abs_err(actual, ref64)
        assert err <= TOL[dtype]["atol"], f"{name}: max abs error {err:.3e} against an all-zero reference"
        return err
    if scale <= resolution:
        err = max_abs_err(actual, ref64)
        assert err <= resolution, f"{name}: max abs error {err:.3e} > resolution {resolution:.3e} (scale {scale:.3e})"
        return err
    bound = rtol * scale
    if ref_lowp is not None:
        bound += 2 * max_abs_err(ref_lowp, ref64)
    assert bound < 0.5 * scale, f"{name}: bound {bound:.3e} is not below half the scale {scale:.3e}: proves nothing"
    err = max_abs_err(actual, ref64)
    assert err <= bound, f"{name}: max abs error {err:.3e} > bound {bound:.3e} = {bound / scale:.2e} x scale ({dtype})"
    return err / scale


def run_train(args, env=None, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    """``python -m fastssl.train ARGS`` in a subprocess (OMP_NUM_THREADS=2 unless ``env`` says otherwise,
    output captured as text)."""
    return subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}, timeout=timeout, **kw)


def step_losses(out: Path) -> list[float]:
    """The per-step losses of the run folder ``out`` (its metrics.jsonl), in order."""
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def nan_loss_at_call(monkeypatch, n: int) -> dict:
    """Make SimCLR's ``n``-th NT-Xent call (counted from 1) return NaN; returns the counter ``{"n": calls}``."""
    from fastssl.methods import simclr

    calls = {"n": 0}
    real = simclr.nt_xent

    def flaky(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == n else loss

    monkeypatch.setattr(simclr, "nt_xent", flaky)
    return calls


def pictures_under_reseeded_rng(method, views, folder: Path, epochs) -> list[Path]:
    """``method.visualize(views, labels 0, folder / "<a|b|c...>.png", epoch)`` once per epoch of ``epochs``
    under no_grad, the global torch RNG reseeded (123) before every call after the first; the global RNG
    state is restored afterwards. Returns the paths."""
    state = torch.get_rng_state()
    paths = [Path(folder) / f"{chr(ord('a') + i)}.png" for i in range(len(epochs))]
    labels = torch.zeros(views[0].shape[0])
    with torch.no_grad():
        for i, (path, epoch) in enumerate(zip(paths, epochs)):
            if i:
                torch.manual_seed(123)
            method.visualize(views, labels, path, epoch)
    torch.set_rng_state(state)
    return paths


def exit_spawned_worker() -> None:
    """End a ``torch.multiprocessing.spawn`` worker that succeeded, skipping interpreter finalization.

    A spawned child leaves through ``sys.exit``, so C++ static destructors run at interpreter teardown; there,
    about one run in 20 of tests/ops/test_nt_xent_distributed.py (gloo + the Triton interpreter) died with
    ``terminate called without an active exception`` (SIGABRT) after both ranks had finished every assertion
    and ``destroy_process_group`` (measured 2026-12-07: a print after the destroy showed up on both ranks before
    the abort; a ``dist.barrier()`` before the destroy did not help). The test had passed; the teardown crash
    turned it into a failure. Call this last, outside ``try`` / ``finally``, so a failing worker still raises
    to ``mp.spawn`` with its traceback.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
