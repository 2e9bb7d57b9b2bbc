"""Evaluation of a learned backbone: kNN and linear probe on frozen features.

    python -m fastssl.eval knn    --checkpoint RUN_OR_CKPT [--data ROOT] [--k 20] [--temperature 0.07]
    python -m fastssl.eval linear --checkpoint RUN_OR_CKPT [--data ROOT] [--epochs 100]
    python -m fastssl.eval knn    --checkpoint RUN --export backbone.pt   # backbone weights alone

Features are extracted once per split with the ``eval`` recipe (resize + center crop, no shuffling).
kNN: cosine similarity, the k nearest training features vote with weight exp(sim / T) (InstDisc /
DINO monitor, k=20, T=0.07). Linear probe: features standardized with the training split's
mean/std, a linear classifier trained by SGD with momentum and a cosine schedule on them.
Both print top-1 / top-5 (%) on the val split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def extract_features(backbone: nn.Module, src, image_size: int, device, batch_size: int = 256,
                     num_threads: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [N, D] on the CPU, labels int64 [N]) for every image of ``src``, in order."""
    from fastssl.data import make_loader

    loader = make_loader(src, "eval", batch_size=min(batch_size, len(src)), epoch=0, seed=seed,
                         device=device, image_size=image_size, num_threads=num_threads, drop_last=False,
                         shuffle=False)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for views, y in loader:
        feats.append(backbone(views[0]).float().cpu())
        labels.append(y.cpu())
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def _topk(scores: torch.Tensor, target: torch.Tensor) -> dict:
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    hit = top == target[:, None]
    return {"top1": 100.0 * hit[:, 0].float().mean().item(), "top5": 100.0 * hit.any(1).float().mean().item()}


@torch.no_grad()
def knn_classify(train_f, train_y, val_f, val_y, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, chunk: int = 1024) -> dict:
    """Weighted kNN accuracy (%): {'top1', 'top5'}. Memory O(chunk * N_train)."""
    if len(train_f) == 0 or len(val_f) == 0:
        raise ValueError("kNN needs non-empty train and val features")
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    k = min(k, len(train_f))
    train_n, val_n = F.normalize(train_f.float(), dim=1), F.normalize(val_f.float(), dim=1)
    scores = []
    for i in range(0, len(val_n), chunk):
        sim, idx = (val_n[i:i + chunk] @ train_n.T).topk(k, dim=1)
        w = (sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes).scatter_add_(1, train_y[idx], w)
        scores.append(votes)
    return _topk(torch.cat(scores), val_y)


def linear_probe(train_f, train_y, val_f, val_y, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 weight_decay: float = 0.0, num_classes: int | None = None, seed: int = 0) -> dict:
    """Linear classifier on frozen, standardized features; accuracy (%) on val: {'top1', 'top5'}."""
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
        return _topk(clf(xva), val_y)


def data_splits(root: Path):
    """(train source, val source or None) of an ImageNet-layout root (train/ + val/, or flat)."""
    from fastssl.data import ImageFolderSource

    root = Path(root)
    if (root / "train").is_dir():
        val = ImageFolderSource(root, split="val") if (root / "val").is_dir() else None
        return ImageFolderSource(root, split="train"), val
    return ImageFolderSource(root), None


def load_backbone(checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """The backbone of a training checkpoint (a run folder -> its last.pt) and the run's config."""
    from fastssl import checkpoint as ckpt_io
    from fastssl.methods import build_method

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "last.pt"
    ckpt = ckpt_io.load(path)
    cfg = ckpt["config"]
    method = build_method(cfg["method"], cfg)
    method.load_state_dict(ckpt["model"])
    return method.backbone, cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastssl.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("protocol", choices=["knn", "linear"])
    p.add_argument("--checkpoint", required=True, help="run folder (uses last.pt) or checkpoint file")
    p.add_argument("--data", default=None, help="dataset root (default: the run's data)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    p.add_argument("--lr", type=float, default=0.1, help="linear probe learning rate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DALI threads")
    p.add_argument("--device", default=None)
    p.add_argument("--export", default=None, help="also write the backbone's state_dict to this file")
    args = p.parse_args(argv)

    from fastssl.data import demo_root

    try:
        backbone, cfg = load_backbone(args.checkpoint)
    except FileNotFoundError as e:
        print(f"fastssl.eval: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone.to(device)
    if args.export:
        from fastssl.checkpoint import atomic_save

        atomic_save(backbone.state_dict(), args.export)
        print(f"backbone weights ({cfg['arch']}) written to {args.export}")
    root = Path(args.data or cfg.get("data") or demo_root())
    train_src, val_src = data_splits(root)
    if val_src is None:
        print(f"fastssl.eval: {root} has no val/ split to evaluate on", file=sys.stderr)
        return 2
    kw = dict(image_size=cfg["image_size"], device=device, batch_size=args.batch_size, num_threads=args.workers)
    print(f"extracting features: {len(train_src)} train, {len(val_src)} val images ...", file=sys.stderr)
    tr_f, tr_y = extract_features(backbone, train_src, **kw)
    va_f, va_y = extract_features(backbone, val_src, **kw)
    n_cls = len(train_src.classes)
    if args.protocol == "knn":
        res = knn_classify(tr_f, tr_y, va_f, va_y, args.k, args.temperature, n_cls)
    else:
        res = linear_probe(tr_f, tr_y, va_f, va_y, epochs=args.epochs, lr=args.lr, num_classes=n_cls)
    print(f"{args.protocol}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"({len(va_y)} val images, {n_cls} classes)")
    print(json.dumps({"protocol": args.protocol, **res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
