"""Quality bench: each method's DEFAULT demo command, then the per-layer linear and kNN probes, as one table.

    python benches/quality.py                                   # every method, demo + natural, seed 0
    python benches/quality.py --methods jigsaw,context --datasets demo,natural --seeds 0,1,2
    python benches/quality.py --methods simclr --datasets natural --train-args "--epochs 5"   # not the default

For every (dataset, method, seed): ``python -m fastssl.train --method M --seed S --quiet --out RUN [--data
ROOT]`` (bow: plus ``--teacher`` = the rotation run of the same dataset and seed, trained first if missing),
then ``python -m fastssl.eval linear --checkpoint RUN --layers all`` and ``... knn ...``: learned against the
run's own random initialization at every tap. Datasets: ``demo`` (the built-in shapes, the run's default data)
and ``natural`` (benches/natural.py: patches of the photographs scikit-image ships; ``pip install -e
".[bench]"``). A run folder that already holds ``eval.json`` is not trained again and a probe already saved
in it (``probe-linear.json``, ``probe-knn.json``) is not recomputed, so an interrupted bench continues.
``--collect`` neither trains nor probes: it only gathers the finished runs under ``--out`` into the results
(a run still missing a part, or with a part that does not parse, is named and left out), e.g. after several
benches ran side by side; it needs neither the dataset nor its packages.

Writes (``--results``, default benches/results/): ``quality.csv`` (rows appended: date, commit, host,
dataset, method, seed, tap, width, linear and kNN top-1 learned / random init, train wall seconds, the train
command; the commit is the one that trained the run, from its ``bench-train.json``, "unknown" for runs
trained before it was recorded) and ``quality.md`` (the
table of this invocation: per run the best tap by linear top-1 and the pooled
output, then every tap). The verdict column applies the bar of issue 23: at least +5 points linear top-1 at
the best tap and not below random init at ``pool``. A bench, not a CI test: each default run takes minutes
to tens of minutes on a CPU (``nice`` it on a shared machine).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
METHODS = ["simclr", "rotation", "jigsaw", "context", "denoise", "inpaint", "colorize", "mae", "halves", "bow"]
DATASETS = ["demo", "natural"]
CSV_FIELDS = ["date", "commit", "host", "dataset", "method", "seed", "tap", "width", "linear_learned",
              "linear_random", "knn_learned", "knn_random", "train_s", "command"]
BAR = 5.0  # points of linear top-1 over random init at the best tap (issue 23)


def data_root(name: str) -> str | None:
    if name == "demo":
        return None
    if name == "natural":
        sys.path.insert(0, str(HERE))
        from natural import natural_root

        return str(natural_root())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise SystemExit(f"benches/quality.py: error: unknown dataset {name!r} (demo, natural or a folder)")


def _run(cmd: list[str], log: Path) -> tuple[int, float, str]:
    """Run ``cmd`` with stdout to ``log``.out (a file, not a pipe: a probe whose parent dies still writes its
    result) and stderr appended to ``log``; returns (exit code, seconds, stdout)."""
    t0 = time.perf_counter()
    out = log.with_suffix(".out")
    with open(log, "a") as f, open(out, "w") as o:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, cwd=REPO, stdout=o, stderr=f, text=True)
    text = out.read_text()
    with open(log, "a") as f:
        f.write(text)
    return r.returncode, time.perf_counter() - t0, text


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def train(method: str, seed: int, root: str | None, run: Path, extra: list[str], teacher: Path | None) -> dict:
    """Train unless ``run`` already holds a finished run; returns {'seconds', 'command', 'commit'}."""
    cmd = [sys.executable, "-m", "fastssl.train", "--method", method, "--seed", str(seed), "--quiet",
           "--out", str(run), *(["--data", root] if root else []),
           *(["--teacher", str(teacher)] if teacher else []), *extra]
    meta_path = run / "bench-train.json"
    if (run / "eval.json").is_file() and meta_path.is_file():
        return json.loads(meta_path.read_text())
    if (run / "last.pt").exists():  # an interrupted run: continue it
        cmd += ["--resume", "auto"]
    run.parent.mkdir(parents=True, exist_ok=True)
    print(f"[quality] train: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rc, seconds, _ = _run(cmd, run.parent / f"{run.name}.log")
    if rc != 0:
        raise SystemExit(f"benches/quality.py: error: training failed (exit {rc}); see {run.parent / run.name}.log")
    meta = {"seconds": round(seconds, 1), "command": shlex.join(cmd[1:]), "commit": head_commit()}
    meta_path.write_text(json.dumps(meta) + "\n")
    return meta


def probe(run: Path, protocol: str, root: str | None, linear_epochs: int) -> dict:
    path = run / f"probe-{protocol}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cmd = [sys.executable, "-m", "fastssl.eval", protocol, "--checkpoint", str(run), "--layers", "all",
           *(["--data", root] if root else []), *(["--epochs", str(linear_epochs)] if protocol == "linear" else [])]
    print(f"[quality] probe: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rc, seconds, out = _run(cmd, run.parent / f"{run.name}.log")
    if rc != 0:
        raise SystemExit(f"benches/quality.py: error: {protocol} probe failed (exit {rc}); see {run.name}.log")
    res = json.loads(out.strip().splitlines()[-1])
    res["seconds"] = round(seconds, 1)
    path.write_text(json.dumps(res) + "\n")
    return res


def rows_of(dataset: str, method: str, seed: int, meta: dict, lin: dict | None, knn: dict | None,
            stamp: dict) -> list[dict]:
    """One row per tap; a probe that was not run leaves its columns NaN. Raises KeyError / TypeError /
    ValueError on a damaged probe (a missing tap or value, probes with different taps, no ``pool``)."""
    nan = {"learned": {"top1": float("nan")}, "random_init": {"top1": float("nan")}}
    taps = (lin or knn)["layers"]["taps"]
    if lin and knn and set(lin["layers"]["taps"]) != set(knn["layers"]["taps"]):
        raise ValueError("the linear and kNN probes have different taps")
    if "pool" not in taps:
        raise ValueError("no pool tap")
    rows = []
    for tap, r in taps.items():
        li = lin["layers"]["taps"][tap] if lin else nan
        k = knn["layers"]["taps"][tap] if knn else nan
        rows.append({**stamp, "commit": meta.get("commit", "unknown"), "dataset": dataset, "method": method,
                     "seed": seed, "tap": tap, "width": r["width"],
                     "linear_learned": float(li["learned"]["top1"]),
                     "linear_random": float(li["random_init"]["top1"]),
                     "knn_learned": float(k["learned"]["top1"]), "knn_random": float(k["random_init"]["top1"]),
                     "train_s": float(meta["seconds"]), "command": meta["command"]})
    return rows


def verdict(rows: list[dict]) -> tuple[dict, dict, str]:
    key = "linear" if rows[0]["linear_learned"] == rows[0]["linear_learned"] else "knn"  # NaN: not run
    best = max(rows, key=lambda r: r[f"{key}_learned"])
    pool = next(r for r in rows if r["tap"] == "pool")
    ok = best[f"{key}_learned"] - best[f"{key}_random"] >= BAR and pool[f"{key}_learned"] >= pool[f"{key}_random"]
    return best, pool, ("learns" if ok else "below the bar") + ("" if key == "linear" else " (kNN; no linear probe)")


def markdown(groups: list[list[dict]]) -> str:
    f = lambda r, key: f"{r[f'{key}_learned']:.1f} / {r[f'{key}_random']:.1f}"  # noqa: E731
    out = ["| dataset | method | seed | best tap (linear) | linear best | linear pool | kNN best | kNN pool | "
           "train | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for rows in groups:
        best, pool, v = verdict(rows)
        kbest = max(rows, key=lambda r: r["knn_learned"] if r["knn_learned"] == r["knn_learned"] else -1)
        out.append(f"| {best['dataset']} | {best['method']} | {best['seed']} | {best['tap']} | {f(best, 'linear')} | "
                   f"{f(pool, 'linear')} | {f(kbest, 'knn')} ({kbest['tap']}) | {f(pool, 'knn')} | "
                   f"{best['train_s'] / 60:.1f} min | {v} |")
    out += ["", "Every tap (top-1 %, learned / random init):", "",
            "| dataset | method | seed | tap | width | linear | kNN |", "|---|---|---|---|---|---|---|"]
    for rows in groups:
        for r in rows:
            out.append(f"| {r['dataset']} | {r['method']} | {r['seed']} | {r['tap']} | {r['width']} | "
                       f"{f(r, 'linear')} | {f(r, 'knn')} |")
    out += ["", "Commands: " + "; ".join(f"`python {rows[0]['command']}`" for rows in groups)]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma list: demo, natural, or a dataset folder")
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--out", default="runs/quality", help="run folders: OUT/<dataset>/<method>-s<seed>")
    p.add_argument("--results", default=str(HERE / "results"), help="where quality.csv and quality.md go")
    p.add_argument("--linear-epochs", type=int, default=100, help="linear probe epochs (fastssl.eval's default)")
    p.add_argument("--protocols", default="linear,knn", help="which per-layer probes: linear, knn or both")
    p.add_argument("--train-args", default="", help="extra training flags (then it is no longer the default run)")
    p.add_argument("--collect", action="store_true",
                   help="train and probe nothing: gather the finished runs under --out into --results")
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in a.seeds.split(",")))
    except ValueError:
        p.error(f"--seeds: expected a comma list of integers, got {a.seeds!r}")
    protocols = [x.strip() for x in a.protocols.split(",") if x.strip()]
    if not protocols or any(x not in ("linear", "knn") for x in protocols):
        p.error(f"--protocols: expected linear, knn or linear,knn, got {a.protocols!r}")
    a.protocols = protocols
    results = Path(a.results)
    if results.exists() and not results.is_dir():
        p.error(f"--results {results} is a file; give a folder (quality.csv and quality.md are written in it)")
    csv_path = results / "quality.csv"
    if csv_path.is_file():
        with open(csv_path, newline="") as f:
            header = next(csv.reader(f), None)
        if header is not None and header != CSV_FIELDS:
            p.error(f"{csv_path} has other columns than this bench writes; give another --results folder")
    extra = shlex.split(a.train_args)
    commit = head_commit()
    stamp = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit,
             "host": f"{platform.machine()}-{os.cpu_count()}cpu"}
    groups = []
    for dataset in dict.fromkeys(d.strip() for d in a.datasets.split(",") if d.strip()):
        root = None if a.collect else data_root(dataset)  # collecting reads JSON only
        tag = dataset if dataset in DATASETS else Path(dataset).name
        for seed in seeds:
            for method in methods:
                run = Path(a.out) / tag / f"{method}-s{seed}"
                if a.collect:
                    parts = ["bench-train.json", *(f"probe-{x}.json" for x in ("linear", "knn") if x in a.protocols)]
                    missing = [x for x in parts if not (run / x).is_file()]
                    if missing:
                        print(f"[quality] collect: {run} left out (no {', '.join(missing)})", file=sys.stderr)
                        continue
                teacher = None
                if method == "bow" and not a.collect:
                    teacher = Path(a.out) / tag / f"rotation-s{seed}"
                    train("rotation", seed, root, teacher, extra, None)
                try:
                    meta = (json.loads((run / "bench-train.json").read_text()) if a.collect
                            else train(method, seed, root, run, extra, teacher))
                    lin = probe(run, "linear", root, a.linear_epochs) if "linear" in a.protocols else None
                    knn = probe(run, "knn", root, a.linear_epochs) if "knn" in a.protocols else None
                    rows = rows_of(tag, method, seed, meta, lin, knn, stamp)
                    verdict(rows)
                except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as e:
                    if not a.collect:
                        raise
                    print(f"[quality] collect: {run} left out (a damaged part: {type(e).__name__}: {e})",
                          file=sys.stderr)
                    continue
                groups.append(rows)
                best, pool, v = verdict(rows)
                print(f"[quality] {tag} {method} seed {seed}: linear best {best['tap']} {best['linear_learned']:.1f} "
                      f"/ {best['linear_random']:.1f}, pool {pool['linear_learned']:.1f} / "
                      f"{pool['linear_random']:.1f}: {v}", file=sys.stderr, flush=True)
    if not groups:
        raise SystemExit("benches/quality.py: error: no finished run to report")
    results.mkdir(parents=True, exist_ok=True)
    new = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            w.writeheader()
        for rows in groups:
            w.writerows(rows)
    table = markdown(groups)
    (results / "quality.md").write_text(f"# Quality bench ({stamp['date']}, commit {commit}, {stamp['host']})\n\n"
                                        + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
