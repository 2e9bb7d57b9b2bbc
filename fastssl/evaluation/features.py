"""Frozen features of a backbone over a data source (the ``eval`` recipe: resize + centre crop)."""

from __future__ import annotations

import torch
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
