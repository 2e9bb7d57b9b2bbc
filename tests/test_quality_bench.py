"""The quality bench's bookkeeping. benches/quality_summary.py (README's quality figures: mean over seeds with
spread) against an independent computation (numpy) on a CSV written here: duplicates count once (latest row),
the gain is paired per seed, the best tap and the verdict follow the means, a missing file is a one-line
error. benches/quality.py --collect gathers finished runs only, with the commit that trained them."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import quality  # noqa: E402
import quality_summary  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benches" / "quality_summary.py"


def _row(date, method, seed, tap, lin, knn, train_s=60.0, dataset="demo"):
    return {"date": date, "commit": "abc", "host": "x", "dataset": dataset, "method": method, "seed": seed,
            "tap": tap, "width": 64, "linear_learned": lin[0], "linear_random": lin[1], "knn_learned": knn[0],
            "knn_random": knn[1], "train_s": train_s, "command": "-m fastssl.train"}


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=quality.CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(3)
    lin = {(s, t): (50 + 10 * rng.random(), 40 + 10 * rng.random()) for s in range(3) for t in ("layer2", "pool")}
    knn = {(s, t): (30 + 10 * rng.random(), 30 + 10 * rng.random()) for s in range(3) for t in ("layer2", "pool")}
    rows = [_row("2026-12-07T10:00:00Z", "rotation", s, t, lin[s, t], knn[s, t]) for s, t in lin]
    # An older measurement of seed 1 that must not count, in a second file.
    old = [_row("2026-12-01T10:00:00Z", "rotation", 1, t, (99.0, 0.0), (99.0, 0.0)) for t in ("layer2", "pool")]
    _write(tmp_path / "a.csv", rows)
    _write(tmp_path / "b.csv", old)
    return tmp_path, lin, knn


def test_means_spreads_and_pairing(table):
    tmp, lin, knn = table
    (g,) = quality_summary.summarize(quality_summary.load([tmp / "b.csv", tmp / "a.csv"]))
    assert g["seeds"] == [0, 1, 2]
    for tap in ("layer2", "pool"):
        for probe, vals in (("linear", lin), ("knn", knn)):
            learned = np.array([vals[s, tap][0] for s in range(3)])
            random = np.array([vals[s, tap][1] for s in range(3)])
            got = g["taps"][tap][probe]
            assert got["learned"] == pytest.approx((learned.mean(), learned.std(ddof=1)), rel=1e-12)
            assert got["random"] == pytest.approx((random.mean(), random.std(ddof=1)), rel=1e-12)
            assert got["gain"] == pytest.approx(((learned - random).mean(), (learned - random).std(ddof=1)),
                                                rel=1e-12)
    best = max(("layer2", "pool"), key=lambda t: np.mean([lin[s, t][0] for s in range(3)]))
    assert g["best_tap"] == best
    gains = {t: np.mean([lin[s, t][0] - lin[s, t][1] for s in range(3)]) for t in ("layer2", "pool")}
    assert g["verdict"] == ("learns" if gains[best] >= 5 and gains["pool"] >= 0 else "below the bar")


def test_verdict_fails_on_a_pool_below_random(tmp_path):
    rows = [_row("2026-12-07", "jigsaw", s, "layer2", (60.0 + s, 45.0), (50.0, 40.0)) for s in range(3)]
    rows += [_row("2026-12-07", "jigsaw", s, "pool", (33.0, 36.0 - s), (38.0, 36.0)) for s in range(3)]
    _write(tmp_path / "q.csv", rows)
    (g,) = quality_summary.summarize(quality_summary.load([tmp_path / "q.csv"]))
    assert g["best_tap"] == "layer2" and g["verdict"] == "below the bar"
    assert g["taps"]["pool"]["linear"]["gain"][0] == pytest.approx(-2.0)


def test_one_seed_has_no_spread_and_the_cli_prints_the_table(tmp_path):
    _write(tmp_path / "q.csv", [_row("2026-12-07", "mae", 0, "pool", (40.0, 30.0), (20.0, 10.0))])
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "q.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "| mae |" in x)
    assert "40.0 ± - / 30.0 ± - (**+10.0 ± -**)" in line and "learns" in line


def test_missing_file_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "no such file" in r.stderr.strip().splitlines()[-1]


def _probe(vals):
    return {"layers": {"taps": {t: {"width": 8, "learned": {"top1": a}, "random_init": {"top1": b}}
                                for t, (a, b) in vals.items()}}}


def test_collect_gathers_finished_runs_only_and_trains_nothing(tmp_path, monkeypatch, capsys):
    import json

    def no_subprocess(*a, **k):
        raise AssertionError("--collect must not train or probe")

    monkeypatch.setattr(quality, "_run", no_subprocess)
    done = tmp_path / "runs" / "demo" / "rotation-s1"
    done.mkdir(parents=True)
    (done / "bench-train.json").write_text(json.dumps({"seconds": 12.5, "command": "-m fastssl.train",
                                                       "commit": "1234abc"}))
    (done / "probe-linear.json").write_text(json.dumps(_probe({"layer2": (42.0, 30.0), "pool": (31.0, 29.0)})))
    (done / "probe-knn.json").write_text(json.dumps(_probe({"layer2": (33.0, 25.0), "pool": (24.0, 22.0)})))
    half = tmp_path / "runs" / "demo" / "bow-s1"  # trained, never probed
    half.mkdir(parents=True)
    (half / "bench-train.json").write_text(json.dumps({"seconds": 1.0, "command": "x"}))
    res = tmp_path / "res"
    assert quality.main(["--methods", "rotation,bow", "--datasets", "demo", "--seeds", "1", "--out",
                         str(tmp_path / "runs"), "--results", str(res), "--collect"]) == 0
    assert "bow-s1 left out (no probe-linear.json, probe-knn.json)" in capsys.readouterr().err
    with open(res / "quality.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"], r["tap"], r["commit"]) for r in rows] == [
        ("rotation", "1", "layer2", "1234abc"), ("rotation", "1", "pool", "1234abc")]
    assert (float(rows[0]["linear_learned"]), float(rows[1]["knn_random"]), float(rows[0]["train_s"])) == (
        42.0, 22.0, 12.5)
    with pytest.raises(SystemExit, match="no finished run"):
        quality.main(["--methods", "bow", "--datasets", "demo", "--seeds", "1", "--out", str(tmp_path / "runs"),
                      "--results", str(res), "--collect"])


def test_summary_knn_only_groups_and_partial_seeds(tmp_path):
    nan = float("nan")
    rows = [_row("2026-12-07", "jigsaw", s, t, (nan, nan), (40.0 + s + (t == "layer2") * 9, 30.0))
            for s in range(2) for t in ("stem", "layer2", "pool")]
    rows.append(_row("2026-12-07", "jigsaw", 2, "pool", (nan, nan), (99.0, 0.0)))  # seed 2 at pool only
    _write(tmp_path / "q.csv", rows)
    warnings = []
    (g,) = quality_summary.summarize(quality_summary.load([tmp_path / "q.csv"]), warn=warnings.append)
    assert g["seeds"] == [0, 1] and any("seed(s) [2]" in w for w in warnings)
    assert g["best_tap"] == "layer2" and g["best_by"] == "knn" and g["verdict"] == "learns (kNN)"
    assert g["taps"]["pool"]["knn"]["learned"] == pytest.approx((40.5, np.std([40.0, 41.0], ddof=1)))


def test_summary_errors_and_strict_json(tmp_path):
    import json

    good = tmp_path / "q.csv"
    _write(good, [_row("2026-12-07", "mae", 0, "pool", (40.0, 30.0), (20.0, 10.0))])
    bad = tmp_path / "bad.csv"
    _write(bad, [_row("2026-12-07", "mae", 0, "pool", ("abc", 30.0), (20.0, 10.0))])

    def cli(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)

    for args, msg in (((bad,), "bad.csv, line 2: not a quality.csv row"),
                      ((good, "--json", good), "is one of the input CSVs"),
                      ((good, "--methods", "mae,nosuch"), "--methods: no rows for nosuch"),
                      ((good, "--json", tmp_path), "--json")):
        r = cli(*args)
        assert r.returncode == 2 and msg in r.stderr.strip().splitlines()[-1], (args, r.stderr)
    assert good.read_text().startswith("date,")  # the input survived
    r = cli(good, "--methods", " mae ", "--json", tmp_path / "s.json")
    assert r.returncode == 0, r.stderr
    (g,) = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert g["taps"]["pool"]["linear"]["gain"] == {"mean": 10.0, "sd": None}


def test_collect_leaves_damaged_runs_out_and_validates_flags(tmp_path, capsys):
    import json

    runs = tmp_path / "runs" / "demo"
    for m, lin in (("rotation", _probe({"layer2": (42.0, 30.0), "pool": (31.0, 29.0)})), ("inpaint", None)):
        (runs / f"{m}-s0").mkdir(parents=True)
        (runs / f"{m}-s0" / "bench-train.json").write_text(json.dumps({"seconds": 3.0, "command": "c"}))
        (runs / f"{m}-s0" / "probe-linear.json").write_text(json.dumps(lin) if lin else '{"layers": {')
        (runs / f"{m}-s0" / "probe-knn.json").write_text(json.dumps(_probe({"layer2": (1.0, 2.0),
                                                                              "pool": (3.0, 4.0)})))
    res = tmp_path / "res"
    assert quality.main(["--methods", "rotation,inpaint", "--datasets", "demo", "--out", str(tmp_path / "runs"),
                         "--results", str(res), "--collect"]) == 0
    assert "inpaint-s0 left out (a damaged part: JSONDecodeError" in capsys.readouterr().err
    with open(res / "quality.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"rotation"} and {r["commit"] for r in rows} == {"unknown"}
    for flags, msg in ((["--seeds", "0,,1"], "--seeds"), (["--protocols", "linaer"], "--protocols"),
                       (["--results", str(res / "quality.csv")], "is a file")):
        with pytest.raises(SystemExit) as e:
            quality.main(["--collect", "--out", str(tmp_path / "runs"), "--datasets", "demo", *flags])
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_tile_diagnosis_cuts_training_sized_tiles():
    """`--variants tiles` cut 16 px tiles whatever the run's size; at the 128 px default the training tile is 32 px
    (found by a new-user probe: the diagnosis silently measured another scale)."""
    import tile_diagnosis

    assert tile_diagnosis.tile_grid({"image_size": 64, "tile": None}) == 4  # 16 px tiles
    assert tile_diagnosis.tile_grid({"image_size": 128, "tile": None}) == 4  # 32 px tiles, not 8 of 16 px
    assert tile_diagnosis.tile_grid({"image_size": 128, "tile": 20}) == 6
    assert tile_diagnosis.tile_grid({"image_size": 255}) == 3  # no "tile" key (the ImageNet preset's 64 px tiles)
