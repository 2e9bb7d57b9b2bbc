"""fastssl.evaluation: kNN against a brute-force reference, top-5 only from voted classes, linear probe."""

import math

import pytest
import torch

from fastssl.evaluation import knn_classify, linear_probe, topk_accuracy


def knn_reference(train_f, train_y, val_f, val_y, k, temperature):
    """Plain loops in float64: each val row's k most similar train rows vote exp(cos / T) for their label;
    predictions are the voted classes by decreasing vote (a class without a vote is never predicted)."""
    tr = [row / row.norm() for row in train_f.double()]
    top1 = top5 = 0
    for x, y in zip(val_f.double(), val_y.tolist()):
        x = x / x.norm()
        sims = sorted(((float(x @ t), int(lab)) for t, lab in zip(tr, train_y)), key=lambda s: -s[0])[:k]
        votes = {}
        for s, lab in sims:
            votes[lab] = votes.get(lab, 0.0) + math.exp(s / temperature)
        ranked = sorted(votes, key=lambda c: -votes[c])
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    n = len(val_y)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n}


def test_all_neighbours_wrong_is_zero_top5():
    """Every neighbour votes for class 0; the truth is class 2 of 3: top-1 and top-5 are 0% (it was
    100% top-5 before: unvoted classes filled the remaining top-5 slots in tie order)."""
    train_f = torch.randn(10, 4)
    train_y = torch.zeros(10, dtype=torch.long)
    val_y = torch.full((4,), 2)
    res = knn_classify(train_f, train_y, torch.randn(4, 4), val_y, k=5, num_classes=3)
    assert res == {"top1": 0.0, "top5": 0.0}
    ref = knn_reference(train_f, train_y, torch.randn(4, 4), val_y, 5, 0.07)
    assert ref == res


@pytest.mark.parametrize("k,temperature,chunk", [(1, 0.07, 1024), (5, 0.5, 7), (20, 0.07, 3), (20, 0.01, 16)])
def test_knn_matches_the_reference(k, temperature, chunk):
    g = torch.Generator().manual_seed(k)
    centers = torch.randn(12, 8, generator=g)
    train_y = torch.randint(0, 12, (90,), generator=g)
    val_y = torch.randint(0, 12, (40,), generator=g)
    train_f = centers[train_y] + 1.5 * torch.randn(90, 8, generator=g)
    val_f = centers[val_y] + 1.5 * torch.randn(40, 8, generator=g)
    res = knn_classify(train_f, train_y, val_f, val_y, k=k, temperature=temperature, num_classes=12, chunk=chunk)
    assert res == knn_reference(train_f, train_y, val_f, val_y, k, temperature)
    assert 0 < res["top1"] <= res["top5"] < 100  # a case where both numbers carry information
    assert (res["top1"] == res["top5"]) == (k == 1)  # one neighbour: one voted class


def test_knn_clustered_and_bad_input():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 16, generator=g) * 5
    ytr, yva = torch.arange(100) % 5, torch.arange(40) % 5
    tr = centers[ytr] + 0.1 * torch.randn(100, 16, generator=g)
    va = centers[yva] + 0.1 * torch.randn(40, 16, generator=g)
    assert knn_classify(tr, ytr, va, yva, k=20, num_classes=5, chunk=7) == {"top1": 100.0, "top5": 100.0}
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(tr, ytr, va, yva, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        knn_classify(tr, ytr, va, yva + 5, num_classes=5)


def test_topk_accuracy_counts_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.7, 0.0, 0.2]])
    target = torch.tensor([1, 2, 1])
    assert topk_accuracy(scores, target) == pytest.approx({"top1": 100 / 3, "top5": 100.0})
    valid = scores > 0
    assert topk_accuracy(scores, target, valid) == pytest.approx({"top1": 100 / 3, "top5": 200 / 3})


def test_linear_probe_separable():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 3, generator=g)
    xtr, xva = torch.randn(300, 8, generator=g), torch.randn(100, 8, generator=g)
    res = linear_probe(xtr, (xtr @ w).argmax(1), xva, (xva @ w).argmax(1), epochs=30, lr=0.1)
    assert res["top1"] > 90 and res["top5"] == 100.0


def test_linear_probe_is_the_documented_recipe():
    """An independent computation of the recipe in fastssl.evaluation.linear's docstring on a small case:
    standardization with the train split's statistics, one linear layer, cross-entropy, SGD with momentum 0.9
    written out by hand, the cosine schedule in closed form (lr/2 (1 + cos(pi t / T)) per step), batch 256,
    the seed's shuffles; the same initialization (drawn from the global RNG). The same val predictions (one
    example is 0.5 points)."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, generator=g)
    xtr, xva = 3 + 2 * torch.randn(600, 6, generator=g), 3 + 2 * torch.randn(200, 6, generator=g)
    ytr = (xtr @ w + torch.randn(600, 4, generator=g)).argmax(1)  # noisy labels: not separable
    yva = (xva @ w).argmax(1)
    epochs, lr, wd, bs = 7, 0.2, 1e-3, 256
    torch.manual_seed(11)
    got = linear_probe(xtr, ytr, xva, yva, epochs=epochs, lr=lr, weight_decay=wd, batch_size=bs, seed=5)

    torch.manual_seed(11)
    clf = torch.nn.Linear(6, 4)  # the probe's initialization comes from the global RNG
    W, b = clf.weight.detach().clone(), clf.bias.detach().clone()
    mean, std = xtr.mean(0), xtr.std(0)
    ztr, zva = (xtr - mean) / std, (xva - mean) / std
    vw, vb = torch.zeros_like(W), torch.zeros_like(b)
    shuffle = torch.Generator().manual_seed(5)
    steps, t = epochs * math.ceil(600 / bs), 0
    for _ in range(epochs):
        perm = torch.randperm(600, generator=shuffle)
        for i in range(0, 600, bs):
            idx = perm[i:i + bs]
            Wr, br = W.clone().requires_grad_(), b.clone().requires_grad_()
            F.cross_entropy(ztr[idx] @ Wr.T + br, ytr[idx]).backward()
            step_lr = lr * 0.5 * (1 + math.cos(math.pi * t / steps))
            vw = 0.9 * vw + Wr.grad + wd * W if t else Wr.grad + wd * W
            vb = 0.9 * vb + br.grad + wd * b if t else br.grad + wd * b
            W, b, t = W - step_lr * vw, b - step_lr * vb, t + 1
    logits = zva @ W.T + b
    want_top1 = 100.0 * (logits.argmax(1) == yva).float().mean().item()
    assert got["top1"] == pytest.approx(want_top1, abs=1e-4)
    assert 40 < got["top1"] < 100  # a case where the recipe matters: neither chance nor trivially separable
