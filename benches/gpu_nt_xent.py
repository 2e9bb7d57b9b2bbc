"""GPU check for the fused NT-Xent (called by benches/gpu_check.sh; plain script, no pytest).

bf16 CUDA, N in {4096, 16384, 65536}, D=128: ms forward, ms forward+backward, achieved TFLOP/s
counting 2*(2N)^2*D for the forward and 3x that for forward+backward, peak memory, against the
bf16 matmul rate measured on the same card (target: >= 50% of it) and the naive full-matrix
PyTorch loss (skipped where it cannot fit). Prints a short table and appends rows to
benches/results/<device>.csv through harness.append_row.

    TRITON_INTERPRET=0 python benches/gpu_nt_xent.py            # on a CUDA machine
    python benches/gpu_nt_xent.py --device cpu --sizes 256 --no-record   # logic smoke test on CPU
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from bench_nt_xent import TAU, D, fwd_bwd, naive_bytes, naive_nt_xent  # noqa: E402

from fastssl.ops import nt_xent  # noqa: E402

SIZES = (4096, 16384, 65536)
TARGET_FRACTION = 0.5  # of the measured bf16 matmul rate


def fwd_flops(n: int, d: int = D) -> float:
    """The issue's count: one (2N x D) @ (D x 2N) similarity matmul."""
    return 2.0 * (2 * n) ** 2 * d


def fwd_bwd_flops(n: int, d: int = D) -> float:
    return 3.0 * fwd_flops(n, d)


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12 if ms > 0 else float("nan")


def matmul_ceiling_tflops(device, dtype, size: int = 8192, rounds: int = 20) -> float:
    """Measured dense matmul rate on this device (the roofline the loss is judged against)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = harness.time_ms(lambda: a @ b, device, rounds, warmup=3)
    return tflops(2.0 * size ** 3, ms)


def naive_fits(n: int, device, dtype) -> bool:
    """The naive loss holds ~4 2N x 2N matrices (logits, mask fill, softmax, its gradient)."""
    if torch.device(device).type != "cuda":
        return n <= 4096
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * naive_bytes(n, torch.finfo(dtype).bits // 8) < 0.9 * free


def measure(n: int, device, dtype, rounds: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    z1 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    z2 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    fb = fwd_bwd(nt_xent, z1, z2)
    row = dict(n=n)
    row["fwd_ms"] = harness.time_ms(lambda: nt_xent(z1, z2, TAU), device, rounds, warmup=2)
    row["fwd_bwd_ms"] = harness.time_ms(fb, device, rounds, warmup=2)
    row["peak_mb"] = harness.peak_memory_mb(fb, device)
    row["fwd_tflops"] = tflops(fwd_flops(n), row["fwd_ms"])
    row["fwd_bwd_tflops"] = tflops(fwd_bwd_flops(n), row["fwd_bwd_ms"])
    row["naive_ms"] = row["naive_peak_mb"] = float("nan")
    if naive_fits(n, device, dtype):
        nb = fwd_bwd(naive_nt_xent, z1, z2)
        try:
            row["naive_ms"] = harness.time_ms(nb, device, max(3, rounds // 3), warmup=1)
            row["naive_peak_mb"] = harness.peak_memory_mb(nb, device)
        except torch.OutOfMemoryError:
            pass
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return row


def record(row: dict, device, dtype, ceiling: float) -> None:
    shape = f"N={row['n']},D={D},{str(dtype).replace('torch.', '')}"
    speedup = row["naive_ms"] / row["fwd_bwd_ms"]
    for op, ms, tf in (("nt_xent_fwd", row["fwd_ms"], row["fwd_tflops"]),
                       ("nt_xent_fwd_bwd", row["fwd_bwd_ms"], row["fwd_bwd_tflops"])):
        naive = op == "nt_xent_fwd_bwd"
        harness.append_row(dict(
            device=harness.device_name(device), op=op, shape=shape, impl="fastssl", ms=f"{ms:.3f}",
            baseline="naive" if naive else "", baseline_ms=f"{row['naive_ms']:.3f}" if naive else "",
            ratio=f"{speedup:.3f}" if naive else "",
            peak_mb=f"{row['peak_mb']:.1f}", baseline_peak_mb=f"{row['naive_peak_mb']:.1f}" if naive else "",
            extra=(f"tflops={tf:.1f};matmul_ceiling_tflops={ceiling:.1f};"
                   f"pct_of_ceiling={100 * tf / ceiling:.1f}")))


def table(rows: list[dict], ceiling: float) -> str:
    head = (f"{'N':>6} {'fwd ms':>8} {'TF/s':>6} {'fwd+bwd ms':>10} {'TF/s':>6} {'%ceil':>6} "
            f"{'peak MB':>8} {'naive ms':>9} {'speedup':>7}")
    lines = [f"NT-Xent D={D}, matmul ceiling {ceiling:.1f} TFLOP/s (target >= {100 * TARGET_FRACTION:.0f}%)",
             head]
    for r in rows:
        lines.append(f"{r['n']:>6} {r['fwd_ms']:>8.3f} {r['fwd_tflops']:>6.1f} {r['fwd_bwd_ms']:>10.3f} "
                     f"{r['fwd_bwd_tflops']:>6.1f} {100 * r['fwd_bwd_tflops'] / ceiling:>6.1f} "
                     f"{r['peak_mb']:>8.1f} {r['naive_ms']:>9.3f} {r['naive_ms'] / r['fwd_bwd_ms']:>7.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--no-record", action="store_true", help="do not append CSV rows")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_nt_xent: no CUDA device, nothing to do")
        return 0
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda"
                                                             else torch.float32)
    ceiling = matmul_ceiling_tflops(device, dtype, size=8192 if device.type == "cuda" else 512,
                                    rounds=20 if device.type == "cuda" else 3)
    rows = []
    for n in args.sizes:
        row = measure(n, device, dtype, args.rounds)
        rows.append(row)
        if not args.no_record:
            record(row, device, dtype, ceiling)
    print(table(rows, ceiling))
    return 0


if __name__ == "__main__":
    sys.exit(main())
