"""Shared test helpers: the dtype tolerance table and the float64-reference comparison.

The rule (DESIGN.md): a fused op's error against the float64 reference may be at most 2x the error
of the same reference computed in the op's own dtype, plus the small absolute floor of the table.
"""

from __future__ import annotations

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
