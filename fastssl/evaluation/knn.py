"""Weighted kNN on frozen features, and top-k accuracy (percent, exact counts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
