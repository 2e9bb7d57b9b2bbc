"""Bench helpers: time fastssl against the baseline a user would otherwise run, in the same run,
report the ratio and the peak memory of each, and append a row to ``<out>/<device>.csv``.

Peak memory: CUDA -> torch.cuda.max_memory_allocated (reset before each call); CPU -> the process's
peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before the call. tracemalloc
does not see torch's CPU allocations, RSS does.

GPU timing (``bench_ms``): ``triton.testing.do_bench`` (warm-up, median of event-timed runs, L2 flushed
before each run) over a rotation of freshly drawn input sets whose total size is at least twice the
card's L2, so no run reads its inputs from a cache the previous one filled. Ceilings
(``measure_ceilings``, also ``python benches/harness.py ceilings --out DIR``): a large device-to-device
copy (GB/s, bytes read + bytes written) and a large bf16 matmul (TFLOP/s), measured on the card the
check runs on; ``benches/summary.py`` reports each row's rate as a % of them.

The contract of a GPU bench script ``benches/gpu_<name>.py`` (run by benches/gpu_check.sh, which
picks up every file matching that glob):

- it is a plain script (no pytest); ``python benches/gpu_<name>.py --out DIR`` writes its rows with
  ``harness.append_row(row, out=DIR)`` (or ``perf_row(..., out=DIR)``), i.e. into ``DIR/<device>.csv``.
  gpu_check.sh passes ``--out`` to every script whose source mentions ``"--out"``; for the others it
  sets ``FASTSSL_BENCH_OUT=DIR``, which is the default ``out`` of ``append_row`` (without it:
  benches/results/), so a script that does not take ``--out`` yet still lands in the check's folder;
- it times with ``bench_ms`` and records rates through ``perf_row`` (``tflops`` or ``gbps`` columns), or
  at least ``extra="tflops=...;"`` / ``"gbps=..."`` (the summary reads both);
- it exits non-zero when it cannot measure what it promises (no CUDA device, a wrong result) and
  prints ``OWED: <what>`` for a figure that cannot be measured in this tree yet (e.g. a method not
  registered); it finishes in well under 2 minutes on one H200 (gpu_check.sh kills it after that);
- ``--device cpu`` with tiny sizes is a smoke test of its logic (tests run it on a CPU).

A typical op row (``x`` fresh per input set; leaf inputs with ``requires_grad`` get ``.grad`` reset)::

    make = lambda: (torch.randn(n, d, device=dev, dtype=torch.bfloat16, requires_grad=True),)
    ms = harness.bench_ms(lambda x: op(x).sum().backward(), make, dev)
    base_ms = harness.bench_ms(lambda x: op_ref(x).sum().backward(), make, dev)
    harness.perf_row("op_fwd_bwd", f"n={n},d={d}", torch.bfloat16, ms, dev, nbytes=3 * n * d * 2,
                     baseline="op_ref", baseline_ms=base_ms,
                     peak_mb=harness.peak_memory_mb(lambda: op(*make()).sum().backward(), dev), out=args.out)

The commit recorded in each row: ``$FASTSSL_COMMIT`` (gpu_check.sh sets it), else the first word of
``benches/COMMIT`` (write it before copying the tree to a machine without .git:
``git rev-parse --short HEAD > benches/COMMIT``), else ``git rev-parse``, else "unknown".
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
COMMIT_FILE = Path(__file__).resolve().parent / "COMMIT"
# New columns go at the end: append_row rewrites an older file's header (its rows keep their values).
FIELDS = ["device", "date", "commit", "op", "shape", "impl", "ms", "baseline", "baseline_ms", "ratio",
          "peak_mb", "baseline_peak_mb", "extra", "dtype", "tflops", "gbps"]
CEILING_COPY = "ceiling_copy_d2d"      # op name of the measured copy rate row (gbps)
CEILING_MATMUL = "ceiling_matmul"      # op name of the measured bf16 matmul rate row (tflops)


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"


def git_commit() -> str:
    """$FASTSSL_COMMIT, else the first word of benches/COMMIT, else `git rev-parse`, else "unknown"."""
    if os.environ.get("FASTSSL_COMMIT", "").strip():
        return os.environ["FASTSSL_COMMIT"].strip()
    if COMMIT_FILE.is_file() and COMMIT_FILE.read_text().split():
        return COMMIT_FILE.read_text().split()[0]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL, cwd=RESULTS.parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_out() -> Path:
    """Where rows go when no ``out`` is given: $FASTSSL_BENCH_OUT (set by gpu_check.sh), else benches/results."""
    return Path(os.environ["FASTSSL_BENCH_OUT"]) if os.environ.get("FASTSSL_BENCH_OUT") else RESULTS


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory_mb(fn, device: torch.device | str) -> float:
    """Peak extra memory (MB) of one call of fn()."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _rss_kb("VmRSS")
    fn()
    return max(_rss_kb("VmHWM") - before, 0) / 1024


def time_ms(fn, device, rounds: int, warmup: int = 1) -> float:
    """Median wall time of fn() in ms (synchronized)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def time_steps(step: Callable[[int], object], steps: int, device: torch.device | str) -> tuple[list[float], list]:
    """(ms of each call, its results) of ``step(i)`` for i in range(steps): CUDA events on a CUDA device
    (synchronized, peak memory stats reset first, so ``torch.cuda.max_memory_allocated`` is the timed
    steps' peak), wall time otherwise."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, results = [], []
    for i in range(steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            results.append(step(i))
            end.record()
            times.append((start, end))
        else:
            t0 = time.perf_counter()
            results.append(step(i))
            times.append((time.perf_counter() - t0) * 1e3)
    if cuda:
        torch.cuda.synchronize(device)
        times = [a.elapsed_time(e) for a, e in times]
    return times, results


def no_cuda(device: torch.device | str, script: str, hint: str = "") -> bool:
    """True (after printing ``<script>: error: no CUDA device ...`` to stderr) when ``device`` is CUDA and
    there is none: a GPU bench script then exits 1."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        print(f"{script}: error: no CUDA device (torch.cuda.is_available() is False){hint}", file=sys.stderr)
        return True
    return False


def trim_heap() -> None:
    """gc, then glibc's malloc_trim: freed heap goes back to the OS, so VmRSS is what is live."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> int:
    """VmHWM := VmRSS (through /proc/self/clear_refs); returns that VmRSS in kB (raises OSError where
    /proc does not allow it). ``peak_rss_mb(before)`` after the call measured gives its peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _rss_kb("VmRSS")


def peak_rss_mb(before_kb: int) -> float:
    """VmHWM - ``before_kb`` in MB (``before_kb`` from ``reset_peak_rss``)."""
    return (_rss_kb("VmHWM") - before_kb) / 1024


def run_child(script: str, args: Sequence, **ident) -> dict:
    """``python <script> --child ARGS`` in a fresh process (the repo root first on PYTHONPATH); the JSON
    dict its last stdout line prints, or, when it fails, ``dict(**ident, ms=nan, peak_mb=nan, error=the
    last stderr line)``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                    os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)], env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        return dict(**ident, ms=float("nan"), peak_mb=float("nan"),
                    error=(out.stderr.strip().splitlines() or ["failed"])[-1][:200])
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(benchmark, op: str, shape: str, fn, baselines: dict, device="cpu", rounds: int = 5,
            measure_memory: bool = True, extra: str = "") -> dict:
    """Time ``fn`` with pytest-benchmark and each baseline (name -> callable or None when it cannot
    run, e.g. out of memory) with the same timer in the same run; record one CSV row per baseline.

    Returns {'ms', 'peak_mb', baseline_name: {'ms', 'ratio', 'peak_mb'}}.
    """
    def timed():
        fn()
        sync(device)

    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
    ms = benchmark.stats.stats.median * 1e3
    peak = peak_memory_mb(fn, device) if measure_memory else float("nan")
    out = {"ms": ms, "peak_mb": peak}
    benchmark.extra_info.update(op=op, shape=shape, peak_mb=round(peak, 1))
    for name, base in (baselines or {"none": None}).items():
        if base is None:
            b_ms, b_peak = float("nan"), float("nan")
        else:
            b_ms = time_ms(base, device, rounds)
            b_peak = peak_memory_mb(base, device) if measure_memory else float("nan")
        ratio = b_ms / ms if ms > 0 else float("nan")  # > 1: fastssl is faster
        out[name] = {"ms": b_ms, "ratio": ratio, "peak_mb": b_peak}
        benchmark.extra_info[f"speedup_vs_{name}"] = round(ratio, 3)
        benchmark.extra_info[f"{name}_peak_mb"] = round(b_peak, 1)
        append_row(dict(device=device_name(device), op=op, shape=shape, impl="fastssl", ms=f"{ms:.3f}",
                        baseline=name, baseline_ms=f"{b_ms:.3f}", ratio=f"{ratio:.3f}",
                        peak_mb=f"{peak:.1f}", baseline_peak_mb=f"{b_peak:.1f}", extra=extra))
    return out


def append_row(row: dict, device_label: str | None = None, out: str | Path | None = None) -> Path:
    """Append one row to ``<out>/<device>.csv`` (header written once; an older file whose header lacks
    some of FIELDS is rewritten with the full header first). ``out`` defaults to ``default_out()``."""
    row = {**row}
    row.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    row.setdefault("commit", git_commit())
    label = (device_label or row["device"]).replace(" ", "_").replace("/", "_")
    folder = Path(out) if out is not None else default_out()
    path = folder / f"{label}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    fields = list(FIELDS)
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            old_fields, old_rows = list(reader.fieldnames or []), list(reader)
        fields += [c for c in old_fields if c not in fields]
        if old_fields != fields:
            with path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows({k: r.get(k) or "" for k in fields} for r in old_rows)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})
    return path


def read_rows(folder: str | Path) -> list[dict]:
    """Every row of ``folder/*.csv`` (in file, then row order)."""
    rows = []
    for f in sorted(Path(folder).glob("*.csv")):
        with f.open(newline="") as fh:
            rows += list(csv.DictReader(fh))
    return rows


# --- GPU timing, ceilings and the standard perf row -------------------------------------------------

def _fmt(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def l2_bytes(device: torch.device | str) -> int:
    """L2 cache size of a CUDA device in bytes (0 on CPU; 50 MiB if torch cannot say)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 * 2**20)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def input_sets(make_inputs: Callable[[], Sequence], device: torch.device | str, l2_factor: float = 2.0,
               max_sets: int = 64, memory_fraction: float = 0.25) -> list[Sequence]:
    """Fresh input sets from ``make_inputs()`` (a tuple of args), as many as it takes for their total size
    to reach ``l2_factor`` x the L2 cache (at least 2 on CUDA, 1 on CPU; at most ``max_sets`` and at
    most ``memory_fraction`` of the free device memory)."""
    device = torch.device(device)
    first = tuple(make_inputs())
    if device.type != "cuda":
        return [first]
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(first))
    free, _ = torch.cuda.mem_get_info(device)
    n = n_input_sets(nbytes, l2_bytes(device), free, l2_factor, max_sets, memory_fraction)
    return [first] + [tuple(make_inputs()) for _ in range(n - 1)]


def n_input_sets(set_bytes: int, l2: int, free: int, l2_factor: float = 2.0, max_sets: int = 64,
                 memory_fraction: float = 0.25) -> int:
    """How many input sets of ``set_bytes`` to rotate through: enough to cover ``l2_factor`` x ``l2``
    bytes, at least 2, at most ``max_sets``, and within ``memory_fraction`` of ``free`` bytes (>= 1)."""
    want = max(2, math.ceil(l2_factor * l2 / max(set_bytes, 1)))
    fit = max(1, int(memory_fraction * free // max(set_bytes, 1)))
    return max(1, min(want, max_sets, fit))


def bench_ms(fn: Callable, make_inputs: Callable[[], Sequence], device: torch.device | str,
             warmup_ms: int = 25, rep_ms: int = 100, rounds_cpu: int = 5, l2_factor: float = 2.0,
             max_sets: int = 64) -> float:
    """Median time (ms) of ``fn(*inputs)``, each call on the next of ``input_sets(make_inputs, ...)``.

    CUDA: ``triton.testing.do_bench(..., return_mode="median")`` (warm-up ``warmup_ms``, then runs for
    about ``rep_ms``, L2 cleared before each, CUDA events). Leaf inputs that require grad get their
    ``.grad`` reset to None before each run (so a forward+backward does not accumulate). CPU: the median
    of ``rounds_cpu`` synchronized wall-clock runs (``time_ms``), for smoke tests.
    """
    device = torch.device(device)
    sets = input_sets(make_inputs, device, l2_factor=l2_factor, max_sets=max_sets)
    state = {"i": 0}

    def call():
        args = sets[state["i"] % len(sets)]
        state["i"] += 1
        return fn(*args)

    if device.type != "cuda":
        return time_ms(call, device, rounds_cpu, warmup=1)
    import triton.testing

    grads = [t for s in sets for t in _tensors(s) if t.requires_grad and t.is_leaf] or None
    return float(triton.testing.do_bench(call, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads,
                                         return_mode="median"))


def copy_ceiling_gbps(device: torch.device | str, nbytes: int | None = None) -> tuple[float, str]:
    """Measured device-to-device copy rate in GB/s (1e9 bytes/s, bytes read + bytes written) of a
    ``nbytes`` fp32 buffer (default: 2 GiB on CUDA, 16 MiB on CPU). Returns (GB/s, shape label)."""
    device = torch.device(device)
    nbytes = nbytes or (2 * 2**30 if device.type == "cuda" else 16 * 2**20)
    n = nbytes // 4
    ms = bench_ms(lambda src, dst: dst.copy_(src),
                  lambda: (torch.randn(n, device=device), torch.empty(n, device=device)), device,
                  max_sets=2)
    return 2 * n * 4 / (ms * 1e-3) / 1e9, f"{n * 4 / 2**20:.0f}MiB"


def matmul_ceiling_tflops(device: torch.device | str, size: int | None = None,
                          dtype: torch.dtype = torch.bfloat16) -> tuple[float, str]:
    """Measured dense matmul rate in TFLOP/s (2*n^3 per product) on random normal operands of n x n
    (default n = 8192 on CUDA, 256 on CPU). Returns (TFLOP/s, shape label)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 256)
    ms = bench_ms(torch.matmul, lambda: (torch.randn(size, size, device=device, dtype=dtype),
                                         torch.randn(size, size, device=device, dtype=dtype)), device,
                  max_sets=4)
    return 2.0 * size**3 / (ms * 1e-3) / 1e12, f"{size}x{size}x{size}"


def measure_ceilings(device: torch.device | str = "cuda", out: str | Path | None = None,
                     record: bool = True) -> dict:
    """Measure both ceilings and record them as rows (ops CEILING_COPY and CEILING_MATMUL).
    Returns {'gbps': float, 'tflops': float}."""
    gbps, copy_shape = copy_ceiling_gbps(device)
    tflops, mm_shape = matmul_ceiling_tflops(device)
    if record:
        name = device_name(device)
        append_row(dict(device=name, op=CEILING_COPY, shape=copy_shape, impl="torch copy_", dtype="float32",
                        gbps=f"{gbps:.5g}", extra="bytes read + bytes written"), out=out)
        append_row(dict(device=name, op=CEILING_MATMUL, shape=mm_shape, impl="torch matmul", dtype="bfloat16",
                        tflops=f"{tflops:.4g}", extra="random normal operands"), out=out)
    return {"gbps": gbps, "tflops": tflops}


def perf_row(op: str, shape: str, dtype: torch.dtype | str, ms: float, device: torch.device | str, *,
             flops: float | None = None, nbytes: float | None = None, baseline: str = "",
             baseline_ms: float | None = None, peak_mb: float | None = None,
             baseline_peak_mb: float | None = None, extra: str = "", out: str | Path | None = None) -> dict:
    """Append the standard row of one timed op: ``flops`` -> achieved TFLOP/s, ``nbytes`` (the fewest
    bytes the op must move: inputs read once, outputs written once) -> achieved GB/s; ``ratio`` is
    baseline_ms / ms (> 1: fastssl is faster). Returns the row."""
    dtype = str(dtype).replace("torch.", "")
    row = dict(device=device_name(device), op=op, shape=shape, impl="fastssl", dtype=dtype, ms=_fmt(ms),
               baseline=baseline, baseline_ms=_fmt(baseline_ms),
               ratio=_fmt(baseline_ms / ms if baseline_ms and ms > 0 else None),
               peak_mb=_fmt(peak_mb, 1), baseline_peak_mb=_fmt(baseline_peak_mb, 1),
               tflops=f"{flops / (ms * 1e-3) / 1e12:.4g}" if flops else "",
               gbps=f"{nbytes / (ms * 1e-3) / 1e9:.5g}" if nbytes else "", extra=extra)
    append_row(row, out=out)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benches/harness.py",
                                description="ceilings: measure the copy GB/s and bf16 matmul TFLOP/s of a device")
    p.add_argument("what", choices=["ceilings"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None, help="results folder (default: $FASTSSL_BENCH_OUT or benches/results)")
    p.add_argument("--no-record", action="store_true", help="print only, append no rows")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print("harness.py: error: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    c = measure_ceilings(args.device, out=args.out, record=not args.no_record)
    print(f"ceilings on {device_name(args.device)}: copy {c['gbps']:.0f} GB/s (read + write), "
          f"matmul {c['tflops']:.1f} TFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
