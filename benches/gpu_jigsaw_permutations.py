"""GPU check for ``jigsaw_permutations``: the CUDA greedy search against the C++ CPU kernel (the path a
user gets by default), same (k, n, method, seed), same run; the two sets must be identical.

Times the whole call (candidates to the device, the k-step greedy search, the result back), uncached,
with ``harness.bench_ms`` (triton.testing.do_bench median on CUDA). No rate column: the candidates
(n! x n bytes, 3.3 MB for 9 tiles) stay in L2, so neither DRAM GB/s nor TFLOP/s measures this op.

    python benches/gpu_jigsaw_permutations.py --out DIR                       # on a CUDA machine
    python benches/gpu_jigsaw_permutations.py --device cpu --k 30 --n 5 --no-record   # CPU smoke test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import harness` when run as a script


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--k", type=int, nargs="+", default=[100, 1000], help="set sizes")
    p.add_argument("--n", type=int, default=9, help="tiles")
    p.add_argument("--method", default="maxmin", choices=["maxmin", "maxavg"])
    p.add_argument("--out", default=None, help="results folder (default: $FASTSSL_BENCH_OUT or benches/results)")
    p.add_argument("--no-record", action="store_true", help="print only, append no rows")
    args = p.parse_args(argv)

    import harness
    import torch

    from fastssl.ops import jigsaw_permutations

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_jigsaw_permutations.py: error: no CUDA device (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 1
    status = 0
    print(f"{'k':>5} {'n':>2} {'method':<7} {device.type + ' ms':>10} {'cpu C++ ms':>11} {'speed-up':>8}")
    for k in args.k:
        run = lambda: jigsaw_permutations(k, args.n, args.method, seed=0, device=device, cache=False)  # noqa: E731, B023
        base = lambda: jigsaw_permutations(k, args.n, args.method, seed=0, device="cpu", cache=False)  # noqa: E731, B023
        if not torch.equal(run(), base()):
            print(f"gpu_jigsaw_permutations.py: FAILED: k={k}: the {device.type} set differs from the CPU set")
            status = 1
            continue
        ms = harness.bench_ms(run, tuple, device, warmup_ms=10, rep_ms=1000, max_sets=1)
        base_ms = harness.bench_ms(base, tuple, "cpu", rounds_cpu=3)
        peak = harness.peak_memory_mb(run, device)
        if not args.no_record:
            harness.perf_row("jigsaw_permutations", f"k={k},n={args.n},{args.method}", "int64", ms, device,
                             baseline="cpu_cxx_kernel", baseline_ms=base_ms, peak_mb=peak,
                             extra="uncached call, candidates to the device and the set back included",
                             out=args.out)
        print(f"{k:>5} {args.n:>2} {args.method:<7} {ms:>10.1f} {base_ms:>11.1f} {base_ms / ms:>7.2f}x")
    return status


if __name__ == "__main__":
    sys.exit(main())
