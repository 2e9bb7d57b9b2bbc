"""Bench helpers: time fastssl against the baseline a user would otherwise run, in the same run,
report the ratio and the peak memory of each, and append a row to benches/results/<device>.csv.

Peak memory: CUDA -> torch.cuda.max_memory_allocated (reset before each call); CPU -> the process's
peak RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before the call. tracemalloc
does not see torch's CPU allocations, RSS does.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import platform
import subprocess
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = ["device", "date", "commit", "op", "shape", "impl", "ms", "baseline", "baseline_ms", "ratio",
          "peak_mb", "baseline_peak_mb", "extra"]


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL, cwd=RESULTS.parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def append_row(row: dict, device_label: str | None = None) -> Path:
    """Append one row to benches/results/<device>.csv (header written once)."""
    row = {**row}
    row.setdefault("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    row.setdefault("commit", git_commit())
    label = (device_label or row["device"]).replace(" ", "_").replace("/", "_")
    path = RESULTS / f"{label}.csv"
    RESULTS.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in FIELDS})
    return path
