"""benches/gpu_gradcache.py (the gradient-cached SimCLR rows of the GPU check) on a CPU: the tiny smoke
run records a row per configuration with the chunked/unchunked ratio, a row that does not fit in the
budget is OWED (never a timeout), and without a GPU the default run is a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import gpu_gradcache  # noqa: E402
import harness  # noqa: E402


def test_tiny_rows_on_cpu(tmp_path, capsys):
    # No budget limit here: on a loaded CPU the tiny rows can take longer than the GPU budget.
    assert gpu_gradcache.main(["--device", "cpu", "--tiny", "--budget-s", "1e9", "--out", str(tmp_path)]) == 0
    rows = harness.read_rows(tmp_path)
    assert [r["shape"] for r in rows] == ["b16x2viewsx32px,C=none", "b16x2viewsx32px,C=8", "b32x2viewsx32px,C=8",
                                          "b64x2viewsx32px,C=8"]
    assert all(r["op"] == "train_simclr_gradcache_resnet18" and float(r["ms"]) > 0 for r in rows)
    assert rows[1]["baseline"] == "unchunked"
    assert float(rows[1]["ratio"]) == pytest.approx(float(rows[1]["baseline_ms"]) / float(rows[1]["ms"]), rel=1e-2)
    slower = float(rows[1]["extra"].split("chunked/unchunked time=")[1].split(";")[0])
    assert slower == pytest.approx(float(rows[1]["ms"]) / float(rows[1]["baseline_ms"]), rel=1e-2)
    assert all("images_per_s=" in r["extra"] for r in rows)
    assert "chunked/unchunked" in capsys.readouterr().out


def test_a_row_over_the_budget_is_owed(tmp_path, capsys):
    assert gpu_gradcache.main(["--device", "cpu", "--tiny", "--only", "16", "32", "--budget-s", "0",
                               "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert [r["shape"] for r in harness.read_rows(tmp_path)] == ["b16x2viewsx32px,C=none", "b16x2viewsx32px,C=8"]
    assert "OWED: gradcache B=32 C=8 (resnet18, 32 px): estimated" in out and "--only 32" in out


def test_without_a_gpu_it_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_gradcache.main([]) == 1
    assert "gpu_gradcache.py: error: no CUDA device" in capsys.readouterr().err
