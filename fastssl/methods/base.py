"""The contract every SSL method fulfils (one file per method, registered by name).

A method declares the views it needs (a DALI recipe of fastssl.data.recipes and its options), builds
its model (a backbone from fastssl.models plus its heads) and computes its loss from a batch of views.
It never decodes images (DATA does) and never touches the optimizer (the trainer does).

Hooks every method may override (the trainer calls them and never names a method):
- ``add_args(parser)``: the method's own flags, validated where they are parsed (argparse ``type=``).
- ``check_config(cfg)``: checks across flags (e.g. a contrastive method needs a global batch >= 2);
  raise ``fastssl.base.errors.ConfigError`` with a one-line message naming the flag.
- ``visualize(views, labels, path, epoch)``: a PNG of what the task sees and predicts, for a fixed set
  of ``viz_images`` images (val split if any, else train) decoded with ``viz_recipe`` (default: the
  method's own recipe) at a fixed seed. Called by rank 0 before the first step (epoch 0) and after
  every epoch (epoch e+1), in eval mode under ``torch.no_grad()`` and with the global RNG state saved
  and restored (so it never changes what training computes); write with ``fastssl.base.viz.save_grid``.
- ``chunkable = True`` with ``embed(views) -> z`` (per-image embeddings, view-major rows) and
  ``loss_from_embeddings(z) -> (loss, metrics)`` (``forward`` = their composition): the method can
  train with ``--chunk-size`` (gradient caching, fastssl.engine.gradcache).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from fastssl.models import build_backbone

METHODS: dict[str, type[Method]] = {}


def register(name: str):
    """Class decorator: make a Method available as ``--method name``."""

    def wrap(cls):
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def build_method(name: str, cfg: dict) -> Method:
    """An instance of the method registered as ``name`` (every method is registered once the package
    ``fastssl.methods`` is imported); ValueError naming the known methods otherwise."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None
    return cls(cfg)


def backbone_kwargs(arch: str, image_size: int, width: int) -> dict:
    """Backbone options that follow from the image size: images of 32 px or less get the CIFAR stem
    (ResNet; 64 px keeps the ImageNet stem, 16x16 maps in layer1, 4x cheaper than a CIFAR stem) or
    smaller patches (ViT: 16 px at >= 128, 8 px at >= 64, else 4 px)."""
    if arch.startswith("resnet"):
        return {"cifar_stem": image_size <= 32, "width": width}
    if arch.startswith("vit"):
        patch = 16 if image_size >= 128 else 8 if image_size >= 64 else 4
        return {"img_size": image_size, "patch_size": patch}
    return {}


class Method(nn.Module):
    """Base class. Subclasses set ``recipe`` and ``defaults``, and implement ``forward``."""

    name: str = ""
    recipe: str = ""  # DALI view recipe
    # Defaults of the generic trainer flags for this method (the demo run uses exactly these).
    defaults: dict = {}

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """Method-specific flags (e.g. --temperature)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg["arch"], **backbone_kwargs(cfg["arch"], cfg["image_size"],
                                                                      cfg["width"]))

    # What visualize() is fed: recipe name (None: ``recipe``) and number of images.
    viz_recipe: str | None = None
    viz_images: int = 8
    # The taps a run's final evaluation reports (fastssl.evaluation.taps.default_taps): "intermediate" (a
    # pretext task's features peak mid-network: ResNet layer1..layer4 + pool) or "output" (contrastive).
    eval_taps: str = "intermediate"
    # Gradient caching (--chunk-size): set True and implement embed / loss_from_embeddings (module doc).
    chunkable: bool = False

    @classmethod
    def check_config(cls, cfg: dict) -> None:
        """Raise fastssl.base.errors.ConfigError for a bad combination of flags (called after parsing)."""

    @classmethod
    def dry_run_config(cls, cfg: dict) -> dict:
        """Flag values ``--dry-run`` sets before ``check_config`` when the config leaves them open: what a
        preset cannot hold (bow: a teacher checkpoint). Default: none."""
        return {}

    def visualize(self, views: list[torch.Tensor], labels: torch.Tensor, path: Path, epoch: int) -> None:
        """Write a PNG to ``path`` showing the task on ``views`` (see module doc). Default: nothing."""

    def recipe_options(self) -> dict:
        """Overrides of the recipe's defaults; ``--recipe-options`` is applied on top."""
        return {}

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(scalar loss, {metric name: float tensor}) for one batch."""
        raise NotImplementedError
