"""Print the bench rows of benches/results/*.csv as a short table (optionally only recent ones)."""

import argparse
import csv
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--since", default="", help="ISO date: only rows at or after it")
    args = p.parse_args()
    rows = []
    for f in sorted(RESULTS.glob("*.csv")):
        with f.open() as fh:
            rows += [r for r in csv.DictReader(fh) if r.get("date", "") >= args.since]
    if not rows:
        print("no bench rows")
        return
    cols = ["device", "op", "shape", "ms", "baseline", "baseline_ms", "ratio", "peak_mb", "extra"]
    width = {c: max(len(c), *(len(str(r.get(c, ""))[:60]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, ""))[:60].ljust(width[c]) for c in cols))


if __name__ == "__main__":
    main()
