"""Ahead-of-time compiles of the NT-Xent Triton kernels for sm80, sm86, sm89 and sm90 (no GPU needed).

The interpreter does not show what the compiler does: registers, spills, shared memory. Each kernel
is compiled with the specialization a real launch gets (the launch plan's own arguments through
Triton's ``native_specialize_impl``: dtypes, divisibility-by-16 hints, ints == 1 as constants) and the
per-arch config, then the cubin's resource usage is checked (tests/ops/aot_helpers.py: cuobjdump
``-res-usage`` and the SASS): no local memory, no spill instructions, and static + dynamic shared
memory within the arch's per-block limit.

Run as a script for the table: ``TRITON_INTERPRET=0 python tests/ops/test_nt_xent_aot.py [--full]``;
``--dump FILE`` writes the specs for another Triton (see tests/ops/aot_helpers.py).
"""

from __future__ import annotations

import sys

import pytest
from aot_helpers import ARCHS, SMEM_LIMIT, check, main, run_script, specialize

# Default (quick): the NT-Xent forward and backward (normalized and raw) and the InfoNCE backward, bf16 and fp32
# at D=128, on the smallest-smem arch and on sm90 (the fp32 raw backward spilled on sm90 with 4 warps).
QUICK = dict(cases=[("bfloat16", 128), ("float32", 128)], archs=[(8, 9), (9, 0)],
             ops=("fwd_nt_xent", "bwd_nt_xent", "bwd_nt_xent/raw", "bwd_dq_dk"))
# Full (slow): every kernel and variant, the contract's dtypes and widths (fp32: D <= 128), every arch.
FULL = dict(cases=[(dt, d) for dt in ("bfloat16", "float16") for d in (32, 64, 128, 200, 512)]
            + [("float32", d) for d in (32, 64, 100, 128)], archs=ARCHS, ops=None)


def _plans(dtype, d: int, n: int, arch):
    """Every launch plan the ops issue, built from CPU tensors of the real shapes."""
    import importlib

    import torch

    ntx = importlib.import_module("fastssl.ops.nt_xent")

    r = 2 * n
    pad16 = importlib.import_module("fastssl.ops.nt_xent.launch").pad16
    z = pad16(torch.empty(r, d, dtype=dtype))  # the launchers pad D to a multiple of 16
    f32 = dict(dtype=torch.float32)
    rn, lse, loss, rad = torch.empty(r, **f32), torch.empty(r, **f32), torch.empty(r, **f32), torch.empty(r, **f32)
    one = torch.empty(1, **f32)
    pos = torch.empty(r, dtype=torch.int64)
    plans = {"rnorm": ntx.rnorm_plan(z, rn, arch)}
    for normalize in (True, False):
        tag = "" if normalize else "/raw"
        plans["fwd_nt_xent" + tag] = ntx.fwd_plan(z, z, rn, rn, pos, one, lse, loss, self_offset=0, exclude_self=True,
                                                  pos_half=True, normalize=normalize, arch=arch)
        plans["fwd_info_nce" + tag] = ntx.fwd_plan(z, z, rn, rn, pos, one, lse, loss, self_offset=r,
                                                   exclude_self=False, pos_half=False, normalize=normalize, arch=arch)
        plans["bwd_nt_xent" + tag] = ntx.nt_xent_bwd_plan(z, rn, one, lse, one, one, torch.empty_like(z), rad,
                                                          normalize=normalize, arch=arch)
        # split-K (row blocks < SMs: N=4096 on a 132-SM H100/H200 splits both) and the gathered backward
        # (rank 1 of 4, per-row weights)
        plans["fwd_nt_xent/split" + tag] = ntx.fwd_plan(z, z, rn, rn, pos, one, lse, loss, self_offset=0,
                                                        exclude_self=True, pos_half=True, normalize=normalize,
                                                        arch=arch, sms=132)
        plans["bwd_nt_xent/split" + tag] = ntx.nt_xent_bwd_plan(z, rn, one, lse, one, one, torch.empty_like(z), rad,
                                                                normalize=normalize, arch=arch, sms=132)
        plans["bwd_gathered" + tag] = ntx.nt_xent_bwd_plan(z, rn, one, lse, one, one, torch.empty_like(z[:r // 4]),
                                                           rad, normalize=normalize, arch=arch, m=r // 4,
                                                           self_offset=r // 4, wcol=rn)
        dq = torch.empty_like(z)
        plans["bwd_dq_dk" + tag] = ntx.info_nce_bwd_plan(z, z, rn, rn, one, one, pos, lse, one, one, dq,
                                                         torch.empty_like(z), rad, self_offset=r, exclude_self=True,
                                                         normalize=normalize, arch=arch)
    return plans


def build_specs(full: bool, n: int = 4096) -> list[tuple[tuple[int, int], dict]]:
    """[(arch, spec)] of every launch of the quick (or full) grid."""
    import torch

    grid = FULL if full else QUICK
    specs = []
    for arch in grid["archs"]:
        for dt, d in grid["cases"]:
            for name, plan in _plans(getattr(torch, dt), d, n, arch).items():
                if grid["ops"] is not None and name not in grid["ops"]:
                    continue
                for kernel, _grid, args, kw in plan:
                    label = f"{dt} D={d} {name} {kw.get('BLOCK_M', '')}x{kw.get('BLOCK_N', '')}"
                    specs.append((arch, specialize(kernel, args, kw, label)))
    return specs


def test_smem_table_matches_the_launchers():
    from fastssl.ops.nt_xent import SMEM_LIMIT as OP_LIMIT

    assert {a: OP_LIMIT[a] for a in ARCHS} == {a: SMEM_LIMIT[a] for a in ARCHS}


def test_nt_xent_kernels_compile_without_spills():
    """NT-Xent forward and backward, InfoNCE backward, bf16 and fp32 D=128, sm89 and sm90: no spills, smem
    within the limits."""
    pytest.importorskip("triton.backends.nvidia")
    check(run_script(__file__))


@pytest.mark.slow
@pytest.mark.aot_full  # opt-in (pyproject addopts): too long for CI's budget; not yet run to completion
def test_all_kernels_compile_without_spills():
    """Every kernel and variant (normalize on/off, exclude_self, dq/dk, rnorm), fp16/bf16 at D up to 512,
    fp32 up to 128, sm80/86/89/90 (about 10 minutes on 2 cores)."""
    pytest.importorskip("triton.backends.nvidia")
    check(run_script(__file__, "--full"))


if __name__ == "__main__":
    main(sys.argv, build_specs)
