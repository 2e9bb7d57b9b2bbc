"""The backbone of a training checkpoint (learned, or the run's own random initialization)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

TRAINING_CHECKPOINT_KEYS = ("model", "config")


def backbone_from_checkpoint(checkpoint: str | os.PathLike, random_init: bool = False) -> tuple[nn.Module, dict]:
    """The backbone of a training checkpoint (a run folder means its ``last.pt``) and the run's config.

    ``random_init=True``: the same network at the initialization the run started from (the trainer's
    seed, ``torch.manual_seed(cfg["seed"])`` before building), the baseline the learned weights are
    compared with; the checkpoint's weights are not loaded.

    Opened safely (``fastssl.base.checkpoint.load``: plain data only, nothing in the file runs). Raises
    ``fastssl.base.checkpoint.CheckpointError`` (one line, naming the file) if it is missing, unsafe, not a
    training checkpoint, or its weights do not fit the network its config describes.
    """
    from fastssl.base import checkpoint as ckpt_io
    from fastssl.methods import METHODS, build_method

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = ckpt_io.load(path, required=TRAINING_CHECKPOINT_KEYS)
    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or cfg.get("method") not in METHODS:
        named = cfg.get("method") if isinstance(cfg, dict) else None
        raise ckpt_io.CheckpointError(f"{path}: its config names method {named!r}, not one of "
                                      f"{', '.join(sorted(METHODS))}")
    try:
        if random_init:
            torch.manual_seed(cfg["seed"])  # as fastssl.engine.trainer._build_model
        method = build_method(cfg["method"], cfg)
        if not random_init:
            method.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ckpt_io.CheckpointError(f"{path}: its weights do not fit the network its config describes: "
                                      f"{' '.join(str(e).split())[:300]}") from None
    return method.backbone, cfg
