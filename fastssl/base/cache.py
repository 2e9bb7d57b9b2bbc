"""The cache folder: ``$FASTSSL_CACHE`` or ``~/.cache/fastssl``.

Holds the extension builds (``ext/``), permutation sets, the generated demo and ImageNet-like folders,
bow vocabularies and colorize bin counts. Read at every call, so a test or a user can point it
elsewhere through the environment.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FASTSSL_CACHE") or Path.home() / ".cache" / "fastssl")
