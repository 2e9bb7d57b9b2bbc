"""Frozen-feature evaluation shared by the trainer (its final kNN) and ``python -m fastssl.eval``:
feature extraction, weighted kNN and the linear probe, reported as top-1 / top-5 accuracy in percent.

Labels are the *training* split's class indices everywhere (``fastssl.data.dataset_splits`` builds
the val split with the train split's class-to-index map), so ``num_classes = len(train.classes)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract_features(backbone: nn.Module, src, image_size: int, device, batch_size: int = 256,
                     num_threads: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D] on the CPU, labels int64 [N]) for every image of ``src``, in ``src.files``
    order, with the ``eval`` recipe (resize + center crop); the backbone runs in eval mode."""
    from fastssl.data import make_loader

    loader = make_loader(src, "eval", batch_size=min(batch_size, len(src)), epoch=0, seed=seed,
                         device=device, image_size=image_size, num_threads=num_threads, drop_last=False,
                         shuffle=False)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for views, y in loader:
            feats.append(backbone(views[0]).float().cpu())
            labels.append(y.cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def topk_accuracy(scores: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
    """Top-1 and top-5 accuracy (%) of class ``scores`` [N, C] against ``target`` [N].

    ``valid`` [N, C] bool marks the candidates a row may predict (kNN: classes with at least one vote);
    an invalid class is never a hit, however the ties between scores fall. With fewer than 5 classes,
    top-5 is top-C.
    """
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    k = min(5, scores.shape[1])
    values, idx = scores.topk(k, dim=1)
    hit = (idx == target[:, None]) & (values > float("-inf"))
    n = len(target)  # exact counts, then one division in float64 (a float32 mean gave 57.4999988 for 23/40)
    return {"top1": 100.0 * int(hit[:, 0].sum()) / n, "top5": 100.0 * int(hit.any(1).sum()) / n}


@torch.no_grad()
def knn_classify(train_f, train_y, val_f, val_y, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, chunk: int = 1024) -> dict:
    """Weighted kNN accuracy (%) ``{'top1', 'top5'}`` (Wu et al. 2018, InstDisc, sec. 3.4; DINO's monitor).

    Cosine similarity; each of the k nearest training features votes for its label with weight
    exp(sim / T) (computed as exp((sim - max sim) / T): the same ranking without overflow at small T).
    Only classes that received at least one vote can be predicted: a class with no neighbour among
    the k is never counted as a top-5 hit. Memory O(chunk * N_train). Raises ``ValueError`` on empty
    features, k < 1, T <= 0 or labels outside [0, num_classes).
    """
    if len(train_f) == 0 or len(val_f) == 0:
        raise ValueError("kNN needs non-empty train and val features")
    if k < 1 or not temperature > 0:
        raise ValueError(f"kNN needs k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    if int(max(train_y.max(), val_y.max())) >= num_classes or int(min(train_y.min(), val_y.min())) < 0:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    k = min(k, len(train_f))
    train_n, val_n = F.normalize(train_f.float(), dim=1), F.normalize(val_f.float(), dim=1)
    scores, counts = [], []
    for i in range(0, len(val_n), chunk):
        sim, idx = (val_n[i:i + chunk] @ train_n.T).topk(k, dim=1)
        w = ((sim - sim[:, :1]) / temperature).exp()
        lab = train_y[idx]
        scores.append(torch.zeros(len(sim), num_classes).scatter_add_(1, lab, w))
        counts.append(torch.zeros(len(sim), num_classes).scatter_add_(1, lab, torch.ones_like(w)))
    return topk_accuracy(torch.cat(scores), val_y, valid=torch.cat(counts) > 0)


def linear_probe(train_f, train_y, val_f, val_y, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, num_classes: int | None = None, seed: int = 0) -> dict:
    """Linear classifier on frozen features standardized with the training split's mean/std, trained by
    SGD (momentum 0.9) with a cosine schedule and cross-entropy; accuracy (%) on val ``{'top1', 'top5'}``."""
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xtr, xva = (train_f - mean) / std, (val_f - mean) / std
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * -(-len(xtr) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch_size):
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(clf(xtr[b]), train_y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return topk_accuracy(clf(xva), val_y)


TRAINING_CHECKPOINT_KEYS = ("model", "config")


def backbone_from_checkpoint(checkpoint: str | os.PathLike, random_init: bool = False) -> tuple[nn.Module, dict]:
    """The backbone of a training checkpoint (a run folder means its ``last.pt``) and the run's config.

    ``random_init=True``: the same network at the initialization the run started from (the trainer's
    seed, ``torch.manual_seed(cfg["seed"])`` before building), the baseline the learned weights are
    compared with; the checkpoint's weights are not loaded.

    Opened safely (``fastssl.checkpoint.load``: plain data only, nothing in the file runs). Raises
    ``fastssl.checkpoint.CheckpointError`` (one line, naming the file) if it is missing, unsafe, not a
    training checkpoint, or its weights do not fit the network its config describes.
    """
    from fastssl import checkpoint as ckpt_io
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
            torch.manual_seed(cfg["seed"])  # as fastssl.trainer._build_model
        method = build_method(cfg["method"], cfg)
        if not random_init:
            method.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ckpt_io.CheckpointError(f"{path}: its weights do not fit the network its config describes: "
                                      f"{' '.join(str(e).split())[:300]}") from None
    return method.backbone, cfg
