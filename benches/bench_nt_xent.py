"""NT-Xent forward+backward on the CPU: fastssl's blockwise path against the full-matrix formulation
a user would otherwise run (lightly's NTXentLoss: normalize, 2N x 2N logits, mask the diagonal,
cross-entropy) and torch.compile of it, same inputs, same run. Rows go to benches/results/<cpu>.csv.

- N=4096, D=128: time ratio and peak memory of each.
- N=32768, D=128: peak memory. The naive path needs the 65536^2 fp32 logits (17.2 GB) plus the
  softmax kept for backward (another 17.2 GB): it is not run (it would take the machine down); its
  computed need goes in `extra`. Ours must stay under 1 GB. One timed call (it takes ~a minute).

The CUDA rows (bf16, N up to 65536, TFLOP/s against the measured matmul ceiling) come from
benches/gpu_nt_xent.py, called by benches/gpu_check.sh.
"""

from __future__ import annotations

import harness
import pytest
import torch
import torch.nn.functional as F

from fastssl.ops import nt_xent

D = 128
TAU = 0.1


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The full-matrix NT-Xent as lightly / solo-learn compute it (O(N^2) memory)."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = z @ z.t() / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    labels = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, labels)


def naive_bytes(n: int, dtype_bytes: int = 4) -> int:
    """Lower bound of the naive path's memory: the 2N x 2N logits and the softmax saved for backward."""
    return 2 * (2 * n) ** 2 * dtype_bytes


def fwd_bwd(loss_fn, z1, z2):
    def run():
        a = z1.detach().requires_grad_()
        b = z2.detach().requires_grad_()
        loss_fn(a, b, TAU).backward()
    return run


def _inputs(n, device="cpu", dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)
    z1 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    z2 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    return z1, z2


def test_nt_xent_cpu_4096(benchmark):
    n = 4096
    z1, z2 = _inputs(n)
    torch.testing.assert_close(nt_xent(z1, z2, TAU), naive_nt_xent(z1, z2, TAU), atol=1e-5, rtol=1e-5)
    try:
        compiled = torch.compile(naive_nt_xent)
        fwd_bwd(compiled, z1, z2)()  # compile outside the timing
        compiled_run = fwd_bwd(compiled, z1, z2)
        note = ""
    except Exception as e:  # no C++ toolchain for inductor, etc.: record the baseline as missing
        compiled_run, note = None, f"torch.compile failed: {type(e).__name__}"
    res = harness.compare(benchmark, "nt_xent_fwd_bwd", f"N={n},D={D},fp32", fwd_bwd(nt_xent, z1, z2),
                          {"naive": fwd_bwd(naive_nt_xent, z1, z2), "torch.compile": compiled_run},
                          device="cpu", rounds=5, extra=note)
    print(f"\nnt_xent N={n} D={D}: fastssl {res['ms']:.1f} ms, peak {res['peak_mb']:.0f} MB | "
          + " | ".join(f"{k} {v['ms']:.1f} ms (x{v['ratio']:.2f}), peak {v['peak_mb']:.0f} MB"
                       for k, v in res.items() if isinstance(v, dict)))


def test_nt_xent_cpu_32768_memory(benchmark):
    n = 32768
    z1, z2 = _inputs(n)
    run = fwd_bwd(nt_xent, z1, z2)
    peak = {}

    def timed():
        peak["mb"] = harness.peak_memory_mb(run, "cpu")

    benchmark.pedantic(timed, rounds=1, warmup_rounds=0, iterations=1)  # one call: ~a minute on 2 cores
    ms = benchmark.stats.stats.median * 1e3
    need_gb = naive_bytes(n) / 1e9
    extra = (f"naive/torch.compile not run: need >= {need_gb:.1f} GB "
             f"(2N x 2N fp32 logits {need_gb / 2:.1f} GB + softmax for backward {need_gb / 2:.1f} GB)")
    for name in ("naive", "torch.compile"):
        harness.append_row(dict(device=harness.device_name("cpu"), op="nt_xent_fwd_bwd",
                                shape=f"N={n},D={D},fp32", impl="fastssl", ms=f"{ms:.3f}", baseline=name,
                                baseline_ms="nan", ratio="nan", peak_mb=f"{peak['mb']:.1f}",
                                baseline_peak_mb=f"{naive_bytes(n) / 2**20:.1f}", extra=extra))
    benchmark.extra_info.update(peak_mb=round(peak["mb"], 1), naive_need_gb=round(need_gb, 1))
    print(f"\nnt_xent N={n} D={D}: fastssl {ms:.0f} ms, peak {peak['mb']:.0f} MB; {extra}")
    assert peak["mb"] < 1024, f"peak memory {peak['mb']:.0f} MB >= 1 GB"


@pytest.mark.cuda
@pytest.mark.parametrize("n", [4096, 16384])
def test_nt_xent_cuda_bf16(benchmark, n):
    """Short CUDA comparison (the full table with TFLOP/s is benches/gpu_nt_xent.py)."""
    z1, z2 = _inputs(n, "cuda", torch.bfloat16)
    harness.compare(benchmark, "nt_xent_fwd_bwd", f"N={n},D={D},bf16", fwd_bwd(nt_xent, z1, z2),
                    {"naive": fwd_bwd(naive_nt_xent, z1, z2)}, device="cuda", rounds=10)
