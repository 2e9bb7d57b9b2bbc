"""fastssl.base.atomic: every whole-file write (checkpoints, exports, pictures, configs, results, caches) goes
through one helper that leaves the old file or the whole new one, and nothing at all when the write fails."""

import pytest

from fastssl.base.atomic import atomic_path, atomic_write_text
from fastssl.base.checkpoint import atomic_save


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new conte")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_an_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "last.pt"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []


def test_a_folder_as_the_target_is_refused_before_writing(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        atomic_save({"a": 1}, folder)
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["exports"]


def test_every_whole_file_writer_uses_it():
    """The kind, not one place: no module writes a whole file with its own temporary-then-rename code."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "fastssl"
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "atomic.py" and re.search(r"os\.replace\(|\.tmp\"\)|mkstemp\(", p.read_text())]
    assert offenders == []
