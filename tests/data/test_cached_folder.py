"""fastssl.data.cached_folder: made once, atomically; what a killed generator leaves behind is cleaned up."""

from __future__ import annotations

import json

import pytest

from fastssl.data.cached_folder import MARKER, cached_folder


def _fill(tmp):
    (tmp / "a.txt").write_text("x")
    return {"n": 1}


def test_generated_once_with_its_marker(tmp_path):
    calls = []
    final = tmp_path / "set"
    for _ in range(2):
        cached_folder(final, lambda t: (calls.append(t), _fill(t))[1])
    assert len(calls) == 1 and (final / "a.txt").read_text() == "x"
    assert json.loads((final / MARKER).read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set", "set.lock"]


def test_a_killed_generators_temporary_folder_is_removed_next_time(tmp_path):
    leftover = tmp_path / "set.tmp-abc123"  # what SIGKILL during generate() leaves
    (leftover / "train").mkdir(parents=True)
    other = tmp_path / "settle.tmp-x"  # another folder's name, not ours: kept
    other.mkdir()
    cached_folder(tmp_path / "set", _fill)
    assert not leftover.exists() and other.exists()


def test_an_error_removes_the_temporary_folder_and_leaves_no_final(tmp_path):
    def broken(tmp):
        (tmp / "half").write_text("written")
        raise RuntimeError("generation failed")

    with pytest.raises(RuntimeError, match="generation failed"):
        cached_folder(tmp_path / "set", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.lock"]
