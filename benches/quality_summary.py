"""Mean over seeds, with its spread, of the quality bench's per-layer results (issue 23: every quality figure in
README is a mean over seeds with its spread).

    python benches/quality_summary.py                                   # benches/results/quality.csv
    python benches/quality_summary.py benches/results/quality.csv --datasets demo --json summary.json

Reads the rows ``benches/quality.py`` appends (one per run and tap). A (dataset, method, seed, tap) measured more
than once counts once: its latest row (by date). Per (dataset, method) and tap: the mean over seeds of linear and
kNN top-1, learned and random init, and of the per-seed gain (learned - random init: both come from the same
seed's network, so the gain is paired), each with its spread = the sample standard deviation over seeds
(n - 1; "-" with one seed). The best tap is the tap with the highest mean learned linear top-1 (the field's
convention, as in quality.py; ties go to the shallower tap, as there). The verdict applies issue 23's bar to
the means: mean linear gain at the best tap >= 5 points and mean linear gain at ``pool`` >= 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BAR = 5.0  # the same bar as benches/quality.py
TAP_ORDER = ["stem", "layer1", "layer2", "layer3", "layer4", "block1", "block2", "block3", "block4", "block5",
             "block6", "block7", "block8", "block9", "block10", "block11", "block12", "norm", "pool"]


def _depth(tap: str) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def load(paths: list[Path]) -> list[dict]:
    """The rows of every CSV, deduplicated: the latest row per (dataset, method, seed, tap)."""
    latest: dict[tuple, dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                key = (r["dataset"], r["method"], int(r["seed"]), r["tap"])
                if key not in latest or r["date"] >= latest[key]["date"]:
                    latest[key] = r
    return list(latest.values())


def summarize(rows: list[dict]) -> list[dict]:
    """One dict per (dataset, method): seeds, per-tap statistics, best tap, verdict."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), {}).setdefault(r["tap"], []).append(r)
    out = []
    for (dataset, method), taps in sorted(groups.items()):
        stats = {}
        for tap, rs in taps.items():
            s = {"seeds": sorted(int(r["seed"]) for r in rs)}
            for probe in ("linear", "knn"):
                lv = [float(r[f"{probe}_learned"]) for r in rs]
                rv = [float(r[f"{probe}_random"]) for r in rs]
                s[probe] = {"learned": mean_sd(lv), "random": mean_sd(rv),
                            "gain": mean_sd([a - b for a, b in zip(lv, rv)])}
            s["train_s"] = mean_sd([float(r["train_s"]) for r in rs])
            stats[tap] = s
        seeds = sorted({sd for s in stats.values() for sd in s["seeds"]})
        best = max(stats, key=lambda t: (stats[t]["linear"]["learned"][0], -_depth(t)))
        pool = stats.get("pool")
        ok = stats[best]["linear"]["gain"][0] >= BAR and pool is not None and pool["linear"]["gain"][0] >= 0
        out.append({"dataset": dataset, "method": method, "seeds": seeds, "best_tap": best,
                    "verdict": "learns" if ok else "below the bar", "taps": stats})
    return out


def _pm(ms: tuple[float, float], signed: bool = False) -> str:
    m, sd = ms
    head = f"{m:+.1f}" if signed else f"{m:.1f}"
    return head + (" ± -" if sd != sd else f" ± {sd:.1f}")


def markdown(summary: list[dict]) -> str:
    lines = ["| dataset | method | seeds | best tap | linear best: learned / random (gain) | "
             "linear pool: learned / random (gain) | kNN pool: learned / random (gain) | train | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    cell = lambda s, p: (f"{_pm(s[p]['learned'])} / {_pm(s[p]['random'])} "  # noqa: E731
                         f"(**{_pm(s[p]['gain'], True)}**)")
    for g in summary:
        b, pool = g["taps"][g["best_tap"]], g["taps"].get("pool")
        lines.append(f"| {g['dataset']} | {g['method']} | {len(g['seeds'])} | {g['best_tap']} | "
                     f"{cell(b, 'linear')} | {cell(pool, 'linear') if pool else '-'} | "
                     f"{cell(pool, 'knn') if pool else '-'} | {b['train_s'][0] / 60:.1f} min | {g['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", nargs="*", default=[str(HERE / "results" / "quality.csv")],
                   help="quality.csv files (default: benches/results/quality.csv)")
    p.add_argument("--datasets", default=None, help="comma list: only these datasets")
    p.add_argument("--methods", default=None, help="comma list: only these methods")
    p.add_argument("--json", default=None, help="also write the summary (means and spreads) here")
    a = p.parse_args(argv)
    paths = [Path(c) for c in a.csv]
    missing = [str(c) for c in paths if not c.is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    rows = load(paths)
    if a.datasets:
        rows = [r for r in rows if r["dataset"] in a.datasets.split(",")]
    if a.methods:
        rows = [r for r in rows if r["method"] in a.methods.split(",")]
    if not rows:
        p.error("no rows left to summarize")
    summary = summarize(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
