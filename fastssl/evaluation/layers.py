"""Both probes at every tap, learned next to the same network at its random initialization, as a table.

Features of every requested tap come from ONE pass over each split (fastssl.evaluation.taps) and are
spilled to raw float32 files in a temporary folder as they are computed, then probed one tap at a
time: the resident memory holds one tap's train + val features at most (6,000 images x 9,216 floats =
221 MB), not all taps at once. The folder is removed when the evaluation ends (also on an error).

Result schema (``eval.json``'s ``"layers"`` and ``python -m fastssl.eval --layers``'s JSON line)::

    {"taps": {tap: {"width": int,
                    "learned": {"top1": float, "top5": float},        # percent, val split
                    "random_init": {"top1": float, "top5": float}}},  # absent for an exported backbone
     "best": tap,                  # the tap with the highest learned top-1 (ties: the shallower one)
     "protocol": "knn" | "linear"}
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fastssl.evaluation.knn import knn_classify
from fastssl.evaluation.linear import linear_probe
from fastssl.evaluation.taps import Taps


@torch.no_grad()
def extract_taps(backbone: nn.Module, src, names: list[str], folder: Path, tag: str, image_size: int, device,
                 batch_size: int = 256, num_threads: int = 2, seed: int = 0) -> tuple[dict[str, Path], torch.Tensor]:
    """One pass of ``backbone`` (eval mode) over ``src`` with the ``eval`` recipe: each tap's features
    ``[N, D]`` float32 appended batch by batch to ``folder/<tag>_<tap>.f32`` (raw rows, plain writes: nothing
    stays mapped in memory) in ``src.files`` order. Returns ({tap: path}, labels int64 [N])."""
    from fastssl.data import make_loader

    loader = make_loader(src, "eval", batch_size=min(batch_size, len(src)), epoch=0, seed=seed, device=device,
                         image_size=image_size, num_threads=num_threads, drop_last=False, shuffle=False)
    taps = Taps(backbone, names)
    paths = {k: folder / f"{tag}_{k}.f32" for k in names}
    files = {k: open(path, "wb") for k, path in paths.items()}  # noqa: SIM115 (closed in finally)
    labels = []
    was_training = backbone.training
    backbone.eval()
    try:
        for views, y in loader:
            for k, v in taps(views[0]).items():
                files[k].write(v.cpu().numpy().astype(np.float32, copy=False).tobytes())
            labels.append(y.cpu())
    finally:
        backbone.train(was_training)
        for f in files.values():
            f.close()
    return paths, torch.cat(labels)


def _load(path: Path, n: int) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(n, -1))


def evaluate_layers(backbones: dict[str, nn.Module], train_src, val_src, names: list[str], protocol: str, *,
                    image_size: int, device, num_classes: int, batch_size: int = 256, num_threads: int = 2,
                    knn_k: int = 20, knn_t: float = 0.07, linear_kw: dict | None = None) -> dict:
    """``protocol`` ("knn" or "linear") at every tap of ``names`` for each backbone of ``backbones``
    (``{"learned": ..., "random_init": ...}``; either may be absent). Returns the schema of the module doc."""
    if protocol not in ("knn", "linear"):
        raise ValueError(f"protocol must be 'knn' or 'linear', got {protocol!r}")
    kw = dict(image_size=image_size, device=device, batch_size=batch_size, num_threads=num_threads)
    result: dict = {"taps": {n: {} for n in names}, "protocol": protocol}
    with tempfile.TemporaryDirectory(prefix="fastssl-taps-") as tmp:
        folder = Path(tmp)
        for which, backbone in backbones.items():
            tr_paths, tr_y = extract_taps(backbone, train_src, names, folder, f"{which}_train", **kw)
            va_paths, va_y = extract_taps(backbone, val_src, names, folder, f"{which}_val", **kw)
            for name in names:  # one tap in memory at a time
                tr_f, va_f = _load(tr_paths[name], len(tr_y)), _load(va_paths[name], len(va_y))
                if protocol == "knn":
                    res = knn_classify(tr_f, tr_y, va_f, va_y, k=knn_k, temperature=knn_t, num_classes=num_classes)
                else:
                    res = linear_probe(tr_f, tr_y, va_f, va_y, num_classes=num_classes, **(linear_kw or {}))
                result["taps"][name].update(width=int(tr_f.shape[1]), **{which: res})
                del tr_f, va_f
    if "learned" in backbones:
        result["best"] = max(names, key=lambda n: (result["taps"][n]["learned"]["top1"], -names.index(n)))
    return result


def format_table(result: dict) -> str:
    """The per-layer table: tap, width, learned top-1 / top-5, random-init top-1 / top-5, best marked."""
    proto = {"knn": "kNN", "linear": "linear"}[result["protocol"]]
    lines = [f"{proto} per layer (top-1 / top-5 %, val split; * best learned top-1)",
             f"  {'tap':<9} {'width':>6}   {'learned':>15}   {'random init':>15}   {'gain':>6}"]
    for name, r in result["taps"].items():
        def cell(key, r=r):
            return f"{r[key]['top1']:6.2f} / {r[key]['top5']:6.2f}" if key in r else f"{'-':>15}"
        gain = f"{r['learned']['top1'] - r['random_init']['top1']:+6.2f}" if {"learned", "random_init"} <= set(r) \
            else f"{'-':>6}"
        mark = "*" if result.get("best") == name else " "
        lines.append(f"{mark} {name:<9} {r['width']:>6}   {cell('learned'):>15}   {cell('random_init'):>15}   {gain}")
    return "\n".join(lines)
