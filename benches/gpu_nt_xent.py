"""GPU check for the fused NT-Xent (called by benches/gpu_check.sh; plain script, no pytest).

CUDA, D=128, N in {4096, 65536, 1048576} (2N views), bf16 and fp32: ms forward, ms forward+backward,
achieved TFLOP/s counting 2*(2N)^2*D per GEMM-equivalent (1 for the forward, 3 for forward+backward:
the similarity tiles, their recomputation and G @ Z), peak extra memory, against the bf16 matmul rate
measured on the same card, next to the naive full-matrix loss and torch.compile of it where they fit
in memory. Targets (benchmarks, not timed tests): N=65536 bf16 fwd+bwd >= 60% of the measured matmul
rate; N=1048576 bf16 fwd+bwd < 5 s with < 2 GB extra memory (the exp unit bounds it near 3 s on an
H200). A size whose time, extrapolated (x N^2) from the previous one, exceeds --max-seconds is skipped
and recorded as such. Split-K rows (small batches): N=4096 (--split-n) fwd and fwd+bwd with the key
range split by the SM count (automatic) against SPLIT_K=1 (one program per row block), same run,
results checked equal to fp32 rounding (exit 1 otherwise). Prints a table and appends rows to
benches/results/<device>.csv through harness.append_row.

    TRITON_INTERPRET=0 python benches/gpu_nt_xent.py                      # on a CUDA machine
    python benches/gpu_nt_xent.py --device cpu --no-record                # logic smoke test on CPU
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
from bench_nt_xent import TAU, D, fwd_bwd, naive_bytes, naive_nt_xent  # noqa: E402

from fastssl.ops import nt_xent  # noqa: E402
from fastssl.ops._backend import triton_interpreting  # noqa: E402
from fastssl.ops.nt_xent import plans  # noqa: E402

SIZES = (4096, 65536, 1048576)
CPU_SIZES = (64, 256)  # --device cpu smoke test
DTYPES = ("bfloat16", "float32")
TARGET_FRACTION = 0.6  # of the measured bf16 matmul rate, N=65536 bf16
TARGET_1M_S, TARGET_1M_GB = 5.0, 2.0


def fwd_flops(n: int, d: int = D) -> float:
    """One (2N x D) @ (D x 2N) similarity GEMM."""
    return 2.0 * (2 * n) ** 2 * d


def fwd_bwd_flops(n: int, d: int = D) -> float:
    return 3.0 * fwd_flops(n, d)


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12 if ms > 0 else float("nan")


def matmul_ceiling_tflops(device, size: int = 8192, rounds: int = 20) -> float:
    """Measured dense bf16 matmul rate on this device (the roofline the loss is judged against)."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    ms = harness.time_ms(lambda: a @ b, device, rounds, warmup=3)
    return tflops(2.0 * size ** 3, ms)


def fits(n: int, device, dtype) -> bool:
    """The naive loss holds ~4 2N x 2N matrices (logits, mask fill, softmax, its gradient)."""
    if torch.device(device).type != "cuda":
        return n <= 4096
    free, _ = torch.cuda.mem_get_info(device)
    return 2 * naive_bytes(n, torch.finfo(dtype).bits // 8) < 0.9 * free


def _time_and_peak(fn, device, rounds):
    ms = harness.time_ms(fn, device, rounds, warmup=1)
    return ms, harness.peak_memory_mb(fn, device)


def measure(n: int, device, dtype, rounds: int, baselines: bool = True) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    z1 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    z2 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    row = dict(n=n, dtype=str(dtype).replace("torch.", ""))
    row["fwd_ms"] = harness.time_ms(lambda: nt_xent(z1, z2, TAU), device, rounds, warmup=1)
    row["fwd_bwd_ms"], row["peak_mb"] = _time_and_peak(fwd_bwd(nt_xent, z1, z2), device, rounds)
    row["fwd_tflops"] = tflops(fwd_flops(n), row["fwd_ms"])
    row["fwd_bwd_tflops"] = tflops(fwd_bwd_flops(n), row["fwd_bwd_ms"])
    for name in ("naive", "torch.compile"):
        row[f"{name}_ms"] = row[f"{name}_peak_mb"] = float("nan")
        if not (baselines and fits(n, device, dtype)):
            continue
        fn = naive_nt_xent if name == "naive" else torch.compile(naive_nt_xent)
        try:
            row[f"{name}_ms"], row[f"{name}_peak_mb"] = _time_and_peak(fwd_bwd(fn, z1, z2), device,
                                                                       max(3, rounds // 3))
        except torch.OutOfMemoryError:
            pass
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return row


def record(row: dict, device, ceiling: float) -> None:
    shape = f"N={row['n']},D={D},{row['dtype']}"
    base = dict(device=harness.device_name(device), shape=shape, impl="fastssl", peak_mb=f"{row['peak_mb']:.1f}")
    pct = 100 * row["fwd_bwd_tflops"] / ceiling
    info = (f"tflops={row['fwd_bwd_tflops']:.1f};matmul_ceiling_tflops={ceiling:.1f};pct_of_ceiling={pct:.1f};"
            f"fwd_ms={row['fwd_ms']:.3f};fwd_tflops={row['fwd_tflops']:.1f}")
    for name in ("naive", "torch.compile"):
        harness.append_row(dict(base, op="nt_xent_fwd_bwd", ms=f"{row['fwd_bwd_ms']:.3f}", baseline=name,
                                baseline_ms=f"{row[f'{name}_ms']:.3f}",
                                ratio=f"{row[f'{name}_ms'] / row['fwd_bwd_ms']:.3f}",
                                baseline_peak_mb=f"{row[f'{name}_peak_mb']:.1f}", extra=info))


def skipped_row(n, dtype, device, projected_s, limit_s) -> None:
    harness.append_row(dict(device=harness.device_name(device), op="nt_xent_fwd_bwd",
                            shape=f"N={n},D={D},{dtype}", impl="fastssl", ms="nan",
                            extra=f"skipped: projected {projected_s:.0f} s > --max-seconds {limit_s:.0f}"))


def table(rows: list[dict], ceiling: float) -> str:
    head = (f"{'N':>8} {'dtype':>8} {'fwd ms':>9} {'fwd+bwd ms':>10} {'TF/s':>6} {'%ceil':>6} {'peak MB':>8} "
            f"{'naive ms':>9} {'compile ms':>10}")
    lines = [f"NT-Xent D={D}, measured bf16 matmul {ceiling:.1f} TFLOP/s; targets: N=65536 bf16 >= "
             f"{100 * TARGET_FRACTION:.0f}%, N=1048576 bf16 < {TARGET_1M_S:.0f} s and < {TARGET_1M_GB:.0f} GB", head]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['n']:>8} {r['dtype']:>8}  skipped: {r['skipped']}")
            continue
        lines.append(f"{r['n']:>8} {r['dtype']:>8} {r['fwd_ms']:>9.2f} {r['fwd_bwd_ms']:>10.2f} "
                     f"{r['fwd_bwd_tflops']:>6.1f} {100 * r['fwd_bwd_tflops'] / ceiling:>6.1f} {r['peak_mb']:>8.1f} "
                     f"{r['naive_ms']:>9.2f} {r['torch.compile_ms']:>10.2f}")
    return "\n".join(lines)


def split_rows(n: int, device, dtype, rounds: int, record_rows: bool) -> list[dict]:
    """fwd and fwd+bwd at N=n: automatic split-K vs SPLIT_K=1, same inputs, same run."""
    g = torch.Generator(device="cpu").manual_seed(1)
    z1 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    z2 = torch.randn(n, D, generator=g).to(device=device, dtype=dtype)
    n_split = {kind: _splits(kind, z1) for kind in ("fwd", "bwd")}
    out, grads = {}, {}
    rows = []
    for split in (None, 1):
        plans.SPLIT_K = split
        try:
            a, b = (x.detach().clone().requires_grad_() for x in (z1, z2))
            loss = nt_xent(a, b, TAU)
            loss.backward()
            out[split], grads[split] = loss.detach().float(), (a.grad.float(), b.grad.float())
            fwd = harness.time_ms(lambda: nt_xent(z1, z2, TAU), device, rounds, warmup=1)
            both = harness.time_ms(fwd_bwd(nt_xent, z1, z2), device, rounds, warmup=1)
        finally:
            plans.SPLIT_K = None
        rows.append(dict(split="auto" if split is None else "1", fwd_ms=fwd, fwd_bwd_ms=both))
    # the same sums in another order: fp32 rounding (gradients: one rounding of the dtype)
    eps = torch.finfo(dtype).eps
    if abs(float(out[None] - out[1])) > 1e-5 or any(
            float((x - y).abs().max()) > 2 * eps * float(y.abs().max()) + 1e-6
            for x, y in zip(grads[None], grads[1])):
        raise SystemExit(f"split-K result differs from unsplit at N={n} {dtype}")
    if record_rows:
        info = f"splits_fwd={n_split['fwd']};splits_bwd={n_split['bwd']}"
        for kind in ("fwd", "fwd_bwd"):
            harness.append_row(dict(device=harness.device_name(device), op=f"nt_xent_{kind}_splitk",
                                    shape=f"N={n},D={D},{str(dtype).replace('torch.', '')}", impl="fastssl split-K",
                                    ms=f"{rows[0][kind + '_ms']:.3f}", baseline="unsplit (SPLIT_K=1)",
                                    baseline_ms=f"{rows[1][kind + '_ms']:.3f}",
                                    ratio=f"{rows[1][kind + '_ms'] / rows[0][kind + '_ms']:.3f}", extra=info))
    print(f"split-K N={n} {dtype}: splits fwd {n_split['fwd']}, bwd {n_split['bwd']}; " + "; ".join(
        f"SPLIT_K={r['split']}: fwd {r['fwd_ms']:.3f} ms, fwd+bwd {r['fwd_bwd_ms']:.3f} ms" for r in rows))
    return rows


def _splits(kind: str, z) -> int:
    """The automatic split count of kernel ``kind`` for Z = [z1; z2] on z's device."""
    arch = plans.arch_of(z)
    cfg = plans.triton_config(kind, z.dtype, z.shape[1], arch)
    r = 2 * z.shape[0]
    return plans.key_splits(math.ceil(r / cfg["BLOCK_M"]), r, cfg["BLOCK_N"], plans._sms(z, arch, None),
                            arch is None)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help=f"default {SIZES} (cpu: {CPU_SIZES})")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="skip a size whose extrapolated fwd+bwd time x (rounds + 3) exceeds this")
    ap.add_argument("--no-baselines", action="store_true", help="fastssl only")
    ap.add_argument("--no-record", action="store_true", help="do not append CSV rows")
    ap.add_argument("--split-n", type=int, default=None,
                    help="N of the split-K rows (default 4096; cpu: 24, under TRITON_INTERPRET=1 only); 0: none")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_nt_xent: no CUDA device, nothing to do")
        return 0
    cpu = device.type == "cpu"
    sizes = args.sizes or (CPU_SIZES if cpu else SIZES)
    ceiling = matmul_ceiling_tflops(device, size=512 if cpu else 8192, rounds=3 if cpu else 20)
    rows = []
    for dt in args.dtypes:
        dtype = getattr(torch, dt)
        prev = None
        for n in sorted(sizes):
            rounds = args.rounds if n <= 65536 else 2
            if prev is not None:
                projected = prev["fwd_bwd_ms"] * (n / prev["n"]) ** 2 / 1e3 * (rounds + 3)
                if projected > args.max_seconds:
                    rows.append(dict(n=n, dtype=dt, skipped=f"projected {projected:.0f} s"))
                    if not args.no_record:
                        skipped_row(n, dt, device, projected, args.max_seconds)
                    continue
            row = measure(n, device, dtype, rounds, baselines=not args.no_baselines)
            assert math.isfinite(row["fwd_bwd_ms"])
            rows.append(row)
            prev = row
            if not args.no_record:
                record(row, device, ceiling)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(table(rows, ceiling))
    split_n = args.split_n if args.split_n is not None else (24 if cpu else 4096)
    if split_n and (not cpu or triton_interpreting()):
        import os

        old = os.environ.get("FASTSSL_BACKEND")
        os.environ["FASTSSL_BACKEND"] = "triton"  # CPU tensors: the interpreter (logic smoke test)
        try:
            for dt in args.dtypes:
                split_rows(split_n, device, getattr(torch, dt), 2 if cpu else args.rounds, not args.no_record)
        finally:
            os.environ.pop("FASTSSL_BACKEND") if old is None else os.environ.__setitem__("FASTSSL_BACKEND", old)
    elif split_n:
        print("split-K rows: CUDA, or the Triton interpreter on CPU (TRITON_INTERPRET=1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
