"""Checkpoints: safe to open, written atomically, RNG states captured and restored.

Format: ``torch.save`` of a dict holding only tensors, numbers, strings, booleans, None, lists and
dicts (the config as a plain dict; RNG states as tensors; see :func:`rng_state`). :func:`load` opens
it with ``torch.load(weights_only=True)``, whose unpickler only rebuilds those types: a crafted file
whose pickle would call a function (``os.system`` ...) is refused before anything runs, with a
one-line ``CheckpointError`` naming the file. Checkpoints travel between people (an evaluated run, a
``--resume``, a teacher network), so nothing here ever unpickles arbitrary objects.

Writes are atomic (temp file in the same folder, fsync, rename): a crash or a SIGKILL mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from fastssl.base.atomic import atomic_path
from fastssl.base.errors import DataError


class CheckpointError(DataError):
    """A checkpoint file that is missing, unreadable, unsafe or not a fastssl checkpoint (names the file)."""


_SAFE = (torch.Tensor, int, float, str, bool, type(None))


def _check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``obj`` is made of tensors, numbers, strings, None, lists/tuples and
    dicts with str/int keys only (what weights_only loading rebuilds)."""
    if isinstance(obj, _SAFE):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not a str/int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not a tensor, number, string, list or dict")


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; ``obj`` must be plain (see the module doc), else TypeError."""
    _check_plain(obj)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """Open a checkpoint safely (``weights_only=True``, on the CPU); a dict with the ``required`` keys.

    Raises ``CheckpointError`` (one line, naming the file) when it is missing, not a torch file,
    holds anything but plain data (a pickle that would build other objects or call functions), or
    lacks a required key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6
        raise CheckpointError(f"cannot read checkpoint {path}: not a torch.save file (zip archive)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line or "GLOBAL" in line),
                     "it holds objects other than tensors, numbers, strings, lists and dicts")
        raise CheckpointError(f"refused to open {path}: not plain data, so it was not unpickled (nothing in it "
                              f"ran): {first}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a fastssl checkpoint (it holds a {type(obj).__name__}, not a dict)")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not a fastssl training checkpoint (missing {', '.join(missing)})")
    return obj


def rng_state() -> dict:
    """Every RNG the run draws from, as plain data: tensors and numbers only (safe to load)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global RNG)
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state((nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"],  # noqa: NPY002
                         nps["has_gauss"], nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
