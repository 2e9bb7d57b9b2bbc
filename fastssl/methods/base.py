"""The contract every SSL method fulfils (one file per method, registered by name).

A method declares the views it needs (a DALI recipe of fastssl.data.recipes and its options), builds
its model (a backbone from fastssl.models plus its heads) and computes its loss from a batch of views.
It never decodes images (DATA does) and never touches the optimizer (the trainer does).
"""

from __future__ import annotations

import argparse

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

    def recipe_options(self) -> dict:
        """Overrides of the recipe's defaults; ``--recipe-options`` is applied on top."""
        return {}

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(scalar loss, {metric name: float tensor}) for one batch."""
        raise NotImplementedError
