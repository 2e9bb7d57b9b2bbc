"""Atomic file writes: a reader (or a later run) sees the old file or the whole new one, never a part, and a
write that fails leaves nothing behind (no partial file, no temporary file).

One piece for every file fastssl writes whole: checkpoints (``base.checkpoint.atomic_save``), exported
backbones, pictures, run configs and results, decode caches, permutation sets.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if missing) to write to; when the block ends
    without an error it replaces ``path`` (``os.replace``: atomic on one file system), on any error
    (KeyboardInterrupt included) it is deleted and the error propagates. ``path`` naming an existing folder
    raises IsADirectoryError before anything is written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
