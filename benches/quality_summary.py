"""Mean over seeds, with its spread, of the quality bench's per-layer results (issue 23: every quality figure in
README is a mean over seeds with its spread).

    python benches/quality_summary.py                                   # benches/results/quality.csv
    python benches/quality_summary.py benches/results/quality.csv --datasets demo --json summary.json

Reads the rows ``benches/quality.py`` appends (one per run and tap). A (dataset, method, seed, tap) measured more
than once counts once: its latest row (by date). Per (dataset, method) and tap: the mean over seeds of linear and
kNN top-1, learned and random init, and of the per-seed gain (learned - random init: both come from the same
seed's network, so the gain is paired), each with its spread = the sample standard deviation over seeds
(n - 1; "-" with one seed). The best tap is the tap with the highest mean learned linear top-1 (the field's
convention, as in quality.py; ties go to the shallower tap, as there; kNN where a group has no linear probe).
The verdict applies issue 23's bar to the means: mean linear gain at the best tap >= 5 points and mean linear
gain at ``pool`` >= 0. A seed missing at some tap of its group is left out of the whole group (with a warning),
so every tap's mean is over the same seeds. ``--json``: the same numbers, each as {"mean", "sd"} (null: no
spread with one seed, or not measured). Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fastssl

from quality import BAR  # noqa: E402  (issue 23's bar: one definition, in quality.py)

from fastssl.base.atomic import atomic_write_text  # noqa: E402

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


NUMBERS = ("linear_learned", "linear_random", "knn_learned", "knn_random", "train_s")


def load(paths: list[Path]) -> list[dict]:
    """The rows of every CSV, deduplicated: the latest row per (dataset, method, seed, tap) (on equal dates the
    later file / line). Raises ValueError naming the file and line of a row that is not a quality.csv row."""
    latest: dict[tuple, dict] = {}
    for path in paths:
        try:
            with open(path, newline="") as f:
                for i, r in enumerate(csv.DictReader(f), start=2):
                    try:
                        r = {**r, "seed": int(r["seed"]), **{k: float(r[k]) for k in NUMBERS}}
                        key = (r["dataset"], r["method"], r["seed"], r["tap"])
                        if key not in latest or r["date"] >= latest[key]["date"]:
                            latest[key] = r
                    except (KeyError, TypeError, ValueError) as e:
                        raise ValueError(f"{path}, line {i}: not a quality.csv row ({type(e).__name__}: {e})") from e
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text CSV file") from None
    return list(latest.values())


def summarize(rows: list[dict], warn=lambda msg: print(msg, file=sys.stderr)) -> list[dict]:
    """One dict per (dataset, method): seeds, per-tap statistics, best tap, the probe it was chosen by, verdict."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), {}).setdefault(r["tap"], []).append(r)
    out = []
    for (dataset, method), taps in sorted(groups.items()):
        per_tap = {tap: {r["seed"] for r in rs} for tap, rs in taps.items()}
        seeds = sorted(set.intersection(*per_tap.values()))
        dropped = sorted(set.union(*per_tap.values()) - set(seeds))
        if dropped:
            warn(f"quality_summary: {dataset} {method}: seed(s) {dropped} not measured at every tap, left out")
        if not seeds:
            continue
        stats = {}
        for tap, rs in taps.items():
            rs = sorted((r for r in rs if r["seed"] in seeds), key=lambda r: r["seed"])
            s = {"seeds": seeds}
            for probe in ("linear", "knn"):
                lv = [r[f"{probe}_learned"] for r in rs]
                rv = [r[f"{probe}_random"] for r in rs]
                s[probe] = {"learned": mean_sd(lv), "random": mean_sd(rv),
                            "gain": mean_sd([a - b for a, b in zip(lv, rv)])}
            s["train_s"] = mean_sd([r["train_s"] for r in rs])
            stats[tap] = s
        measured = {probe: [t for t, v in stats.items() if not math.isnan(v[probe]["learned"][0])]
                    for probe in ("linear", "knn")}
        key = "linear" if measured["linear"] else "knn"
        cands = measured[key]
        if not cands:
            warn(f"quality_summary: {dataset} {method}: no probe measured, left out")
            continue
        best = max(cands, key=lambda t: (stats[t][key]["learned"][0], -_depth(t)))
        pool = stats.get("pool")
        ok = stats[best][key]["gain"][0] >= BAR and pool is not None and pool[key]["gain"][0] >= 0
        out.append({"dataset": dataset, "method": method, "seeds": seeds, "best_tap": best, "best_by": key,
                    "verdict": ("learns" if ok else "below the bar") + ("" if key == "linear" else " (kNN)"),
                    "taps": stats})
    return out


def to_json(summary: list[dict]) -> list[dict]:
    """The summary with every (mean, sd) as {"mean", "sd"} and NaN as null (strict JSON)."""
    def conv(v):
        if isinstance(v, tuple):
            return {"mean": conv(v[0]), "sd": conv(v[1])}
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return None if isinstance(v, float) and v != v else v
    return conv(summary)


def _pm(ms: tuple[float, float], signed: bool = False) -> str:
    m, sd = ms
    head = f"{m:+.1f}" if signed else f"{m:.1f}"
    return head + (" ± -" if sd != sd else f" ± {sd:.1f}")


def markdown(summary: list[dict]) -> str:
    """The table: per group the best tap's and the pooled output's means ± spreads (NaN: not measured)."""
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
    if a.json and any(Path(a.json).resolve() == c.resolve() for c in paths):
        p.error(f"--json {a.json} is one of the input CSVs; give another file")
    try:
        rows = load(paths)
    except ValueError as e:
        p.error(str(e))
    if not rows:
        p.error("the CSV file(s) hold no rows")
    for col, flag, want in (("dataset", "--datasets", a.datasets), ("method", "--methods", a.methods)):
        if want:
            names = [x.strip() for x in want.split(",") if x.strip()]
            unknown = [x for x in names if not any(r[col] == x for r in rows)]
            if unknown:
                p.error(f"{flag}: no rows for {', '.join(unknown)} "
                        f"(the CSVs have {', '.join(sorted({r[col] for r in rows}))})")
            rows = [r for r in rows if r[col] in names]
    summary = summarize(rows)
    if not summary:
        p.error("nothing left to summarize")
    print(markdown(summary), end="", flush=True)
    if a.json:
        try:
            atomic_write_text(a.json, json.dumps(to_json(summary), indent=1) + "\n")
        except OSError as e:
            p.error(f"--json {a.json}: {e.strerror or e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
