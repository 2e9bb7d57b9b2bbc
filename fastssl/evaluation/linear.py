"""The linear probe on frozen features.

Recipe (the field's linear evaluation, after Goyal et al. 2019 "Scaling and Benchmarking Self-Supervised
Visual Representation Learning" sec. 4 / VISSL's linear-evaluation configs and solo-learn's linear
protocol): the features are standardized with the training split's mean and std (VISSL puts a
BatchNorm without affine parameters before the classifier: the same thing on frozen features), then one
linear layer is trained with cross-entropy by SGD with momentum 0.9 and a cosine schedule (solo-learn,
MoCo v3; VISSL uses steps), batch 256, ``epochs`` (default 100) at ``lr`` (default 0.1), weight decay
``weight_decay`` (default 0; VISSL 5e-4). Deterministic on the CPU for a seed and the global RNG state: the
shuffles come from ``seed``, the classifier's initialization from the global RNG (so two probes in one process,
e.g. learned and random init, start from different classifiers; seeding it from ``seed`` would change every
published linear number slightly, so it is left for a re-measurement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.evaluation.knn import topk_accuracy


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
