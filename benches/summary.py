"""Print bench rows as one table: op, shape, dtype, ms, achieved TFLOP/s or GB/s, % of the measured
ceiling, speed-up over the baseline, peak memory.

    python benches/summary.py                          # every row of benches/results/*.csv
    python benches/summary.py benches/results/h200-x   # one gpu_check.sh results folder
    python benches/summary.py --since 2026-11-29T10:00:00Z

A row's rate is its ``tflops`` / ``gbps`` column, else ``tflops=`` / ``gbps=`` in its ``extra`` field.
The ceiling is the latest ``ceiling_matmul`` (TFLOP/s, bf16) / ``ceiling_copy_d2d`` (GB/s, read + write)
row of the same device in the rows shown (benches/harness.py measures them); without one, a
``pct_of_ceiling=`` in ``extra`` is shown as recorded. Speed-up = baseline ms / fastssl ms.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CEILING_COPY, CEILING_MATMUL, RESULTS, read_rows  # noqa: E402

COLUMNS = ["op", "shape", "dtype", "ms", "rate", "%ceil", "baseline", "base ms", "speed-up", "peak MB", "note"]


def _extra(row: dict, key: str) -> str:
    m = re.search(rf"(?:^|;)\s*{re.escape(key)}=([^;]*)", row.get("extra") or "")
    return m.group(1).strip() if m else ""


def _num(text: str | None) -> float | None:
    try:
        x = float(text)
    except (TypeError, ValueError):
        return None
    return None if x != x else x  # NaN -> None


def _first(*xs: float | None) -> float | None:
    return next((x for x in xs if x is not None), None)


def ceilings(rows: list[dict]) -> dict:
    """{device: {'tflops': float, 'gbps': float}} from the latest ceiling rows of each device."""
    out: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r.get("date", "")):
        dev = out.setdefault(r.get("device", ""), {})
        if r.get("op") == CEILING_MATMUL and (_num(r.get("tflops")) or 0) > 0:
            dev["tflops"] = _num(r["tflops"])
        if r.get("op") == CEILING_COPY and (_num(r.get("gbps")) or 0) > 0:
            dev["gbps"] = _num(r["gbps"])
    return out


def table_rows(rows: list[dict]) -> list[dict]:
    ceil = ceilings(rows)
    out = []
    for r in rows:
        c = ceil.get(r.get("device", ""), {})
        tflops = _first(_num(r.get("tflops")), _num(_extra(r, "tflops")))
        gbps = _first(_num(r.get("gbps")), _num(_extra(r, "gbps")))
        rate, pct = "", ""
        if tflops is not None:
            rate = f"{tflops:.4g} TFLOP/s"
            pct = f"{100 * tflops / c['tflops']:.1f}" if c.get("tflops") else _extra(r, "pct_of_ceiling")
        elif gbps is not None:
            rate = f"{gbps:.5g} GB/s"
            pct = f"{100 * gbps / c['gbps']:.1f}" if c.get("gbps") else _extra(r, "pct_of_ceiling")
        ratio = _num(r.get("ratio"))
        note = r.get("extra") or ""
        if _extra(r, "images_per_s"):
            note = f"{_extra(r, 'images_per_s')} images/s"
        elif r.get("op") in (CEILING_COPY, CEILING_MATMUL) or tflops is not None or gbps is not None:
            note = ""
        peak = _num(r.get("peak_mb"))
        out.append({
            "op": r.get("op", ""), "shape": r.get("shape", ""), "dtype": r.get("dtype", ""),
            "ms": r.get("ms", ""), "rate": rate, "%ceil": pct,
            "baseline": r.get("baseline", "") if r.get("baseline") not in (None, "none") else "",
            "base ms": r.get("baseline_ms", "") if _num(r.get("baseline_ms")) is not None else "",
            "speed-up": f"{ratio:.2f}x" if ratio is not None else "",
            "peak MB": f"{peak:.0f}" if peak is not None else "", "note": note,
        })
    return out


def render(rows: list[dict], width_cap: int = 40) -> str:
    """The table as text, one header line per device (with its card, commit and date range)."""
    if not rows:
        return "no bench rows"
    lines = []
    for device in dict.fromkeys(r.get("device", "") for r in rows):
        dev_rows = [r for r in rows if r.get("device", "") == device]
        dates = sorted(r.get("date", "") for r in dev_rows)
        commits = ", ".join(dict.fromkeys(r.get("commit", "") for r in dev_rows))
        lines.append(f"{device}  (commit {commits}; {dates[0]} .. {dates[-1]})")
        cells = table_rows(dev_rows)
        width = {c: min(width_cap, max(len(c), *(len(x[c]) for x in cells))) for c in COLUMNS}
        lines.append("  ".join(c.ljust(width[c]) for c in COLUMNS).rstrip())
        for x in cells:
            lines.append("  ".join(x[c][:width[c]].ljust(width[c]) for c in COLUMNS).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(RESULTS), help="folder of <device>.csv files")
    p.add_argument("--since", default="", help="ISO date: only rows at or after it")
    args = p.parse_args(argv)
    rows = [r for r in read_rows(args.folder) if r.get("date", "") >= args.since]
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
