"""NT-Xent forward+backward on the CPU, in one run: fastssl's blockwise path against what a user
picks today, lightly's ``NTXentLoss`` (``pip install lightly``, the ``bench`` extra), the naive
full-matrix loss (normalize, 2N x 2N logits, mask the diagonal, cross-entropy) and torch.compile of
it, same inputs. Rows go to benches/results/<cpu>.csv.

Every implementation is measured in its own child process (``python benches/bench_nt_xent.py
--child IMPL N ROUNDS``): median wall time of ROUNDS forward+backward calls after one warm-up, and
peak memory = VmHWM - VmRSS around one call (VmHWM reset through /proc/self/clear_refs after the
warm-up and malloc_trim; ru_maxrss would carry the parent's peak across fork+exec).

- N=4096, D=128: time ratio and peak memory of each.
- N=32768, D=128: fastssl only (one call, about a minute on 2 cores): the full-matrix ones need the
  65536^2 fp32 logits (17.2 GB) plus the softmax kept for backward (another 17.2 GB): not run, their
  computed need goes in ``extra``. Ours must stay under 1 GB (about 245 MB).

The CUDA rows (bf16 and fp32, N up to 1M, TFLOP/s against the measured matmul rate) come from
benches/gpu_nt_xent.py, called by benches/gpu_check.sh.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import pytest  # noqa: E402

from fastssl.ops import nt_xent  # noqa: E402

D = 128
TAU = 0.1
IMPLS = ("fastssl", "lightly", "naive", "torch.compile")


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


def loss_fn(impl: str):
    if impl == "fastssl":
        return nt_xent
    if impl == "naive":
        return naive_nt_xent
    if impl == "torch.compile":
        return torch.compile(naive_nt_xent)
    if impl == "lightly":
        from lightly.loss import NTXentLoss

        mod = NTXentLoss(temperature=TAU)
        return lambda a, b, _tau: mod(a, b)
    raise ValueError(impl)


def child(impl: str, n: int, rounds: int) -> dict:
    """Runs in a fresh process: one warm-up (compiles), memory of one call, then the timing."""
    z1, z2 = _inputs(n)
    run = fwd_bwd(loss_fn(impl), z1, z2)
    run()  # warm-up (torch.compile compiles here)
    harness.trim_heap()  # give freed heap back, so RSS-before is what is live
    before = harness.reset_peak_rss()  # VmHWM := VmRSS
    run()
    peak_mb = harness.peak_rss_mb(before)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return dict(impl=impl, n=n, ms=times[len(times) // 2], peak_mb=peak_mb, threads=torch.get_num_threads())


def measure(impl: str, n: int, rounds: int) -> dict:
    """``child`` in a separate process; {'ms': nan, 'error': ...} when it cannot run."""
    return harness.run_child(__file__, (impl, n, rounds), impl=impl, n=n)


def _row(n, ours, base, extra=""):
    ratio = base["ms"] / ours["ms"] if ours["ms"] > 0 else float("nan")
    harness.append_row(dict(device=harness.device_name("cpu"), op="nt_xent_fwd_bwd", shape=f"N={n},D={D},fp32",
                            impl="fastssl", ms=f"{ours['ms']:.3f}", baseline=base["impl"],
                            baseline_ms=f"{base['ms']:.3f}", ratio=f"{ratio:.3f}", peak_mb=f"{ours['peak_mb']:.1f}",
                            baseline_peak_mb=f"{base['peak_mb']:.1f}", extra=extra or base.get("error", "")))
    return ratio


def test_nt_xent_cpu_4096(benchmark):
    n = 4096
    z1, z2 = _inputs(n)
    torch.testing.assert_close(nt_xent(z1, z2, TAU), naive_nt_xent(z1, z2, TAU), atol=1e-5, rtol=1e-5)
    benchmark.pedantic(fwd_bwd(nt_xent, z1, z2), rounds=3, warmup_rounds=1, iterations=1)  # in-process
    res = {impl: measure(impl, n, rounds=5) for impl in IMPLS}
    ours = res["fastssl"]
    lines = [f"nt_xent N={n} D={D} (child processes): fastssl {ours['ms']:.0f} ms, peak {ours['peak_mb']:.0f} MB"]
    for impl in IMPLS[1:]:
        ratio = _row(n, ours, res[impl])
        benchmark.extra_info[f"speedup_vs_{impl}"] = round(ratio, 3)
        benchmark.extra_info[f"{impl}_peak_mb"] = round(res[impl]["peak_mb"], 1)
        lines.append(f"  {impl}: {res[impl]['ms']:.0f} ms (fastssl x{ratio:.2f} faster), "
                     f"peak {res[impl]['peak_mb']:.0f} MB {res[impl].get('error', '')}")
    benchmark.extra_info.update(fastssl_ms=round(ours["ms"], 1), fastssl_peak_mb=round(ours["peak_mb"], 1))
    print("\n" + "\n".join(lines))


def test_nt_xent_cpu_32768_memory(benchmark):
    n = 32768
    res = {}

    def once():
        res.update(measure("fastssl", n, rounds=1))

    benchmark.pedantic(once, rounds=1, warmup_rounds=0, iterations=1)  # child: warm-up + 2 calls
    need_gb = naive_bytes(n) / 1e9
    extra = (f"not run: needs >= {need_gb:.1f} GB (2N x 2N fp32 logits {need_gb / 2:.1f} GB + softmax for "
             f"backward {need_gb / 2:.1f} GB)")
    for impl in IMPLS[1:]:
        _row(n, res, dict(impl=impl, ms=float("nan"), peak_mb=naive_bytes(n) / 2**20), extra)
    benchmark.extra_info.update(fastssl_ms=round(res["ms"], 1), peak_mb=round(res["peak_mb"], 1),
                                naive_need_gb=round(need_gb, 1))
    print(f"\nnt_xent N={n} D={D}: fastssl {res['ms']:.0f} ms, peak {res['peak_mb']:.0f} MB; others {extra}")
    assert res["peak_mb"] < 1024, f"peak memory {res['peak_mb']:.0f} MB >= 1 GB"


@pytest.mark.cuda
@pytest.mark.parametrize("n", [4096, 16384])
def test_nt_xent_cuda_bf16(benchmark, n):
    """Short CUDA comparison (the full table with TFLOP/s is benches/gpu_nt_xent.py)."""
    z1, z2 = _inputs(n, "cuda", torch.bfloat16)
    harness.compare(benchmark, "nt_xent_fwd_bwd", f"N={n},D={D},bf16", fwd_bwd(nt_xent, z1, z2),
                    {"naive": fwd_bwd(naive_nt_xent, z1, z2)}, device="cuda", rounds=10)


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--child":
    print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
