"""The contract every SSL method fulfils (one file per method, registered by name).

A method declares the views it needs (a DALI recipe of fastssl.data.recipes and its options), builds
its model (a backbone from fastssl.models plus its heads) and computes its loss from a batch of views.
It never decodes images (DATA does) and never touches the optimizer (the trainer does).

Hooks every method may override (the trainer calls them and never names a method):
- ``add_args(parser)``: the method's own flags, validated where they are parsed (argparse ``type=``).
- ``check_config(cfg)``: checks across flags (e.g. a contrastive method needs a global batch >= 2);
  raise ``fastssl.base.errors.ConfigError`` with a one-line message naming the flag. The backbone's own
  constraints (a ViT's patch size must divide its size) are checked after it for every method
  (``check_backbone``) on the inputs ``backbone_inputs(cfg)`` names; a method whose backbone sees something
  other than ``--image-size`` views (tiles) overrides that.
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

from fastssl.base.errors import ConfigError
from fastssl.models import build_backbone, check_backbone_input

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


PATCH_RULE = "16 px from --image-size 128, 8 px from 64, else 4 px"  # backbone_kwargs' ViT patches, in words


def backbone_kwargs(arch: str, image_size: int, width: int) -> dict:
    """Backbone options that follow from the image size: images of 32 px or less get the CIFAR stem
    (ResNet; 64 px keeps the ImageNet stem, 16x16 maps in layer1, 4x cheaper than a CIFAR stem) or
    smaller patches (ViT: 16 px at >= 128, 8 px at >= 64, else 4 px: ``PATCH_RULE``)."""
    if arch.startswith("resnet"):
        return {"cifar_stem": image_size <= 32, "width": width}
    if arch.startswith("vit"):
        patch = 16 if image_size >= 128 else 8 if image_size >= 64 else 4
        return {"img_size": image_size, "patch_size": patch}
    return {}


def _backbone_refusal(cls: type[Method], cfg: dict) -> tuple[str, str] | None:
    """(flag, the network's own reason) for the first size the backbone ``cfg`` builds refuses: its built size
    (``--image-size``) or an input ``cls.backbone_inputs(cfg)`` feeds it; None when it takes them all.
    ConfigError from ``backbone_inputs`` (flags that define no input) propagates."""
    arch, kw = cfg["arch"], backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"])
    try:
        check_backbone_input(arch, kw)
    except ValueError as e:
        return "--image-size", str(e)
    for flag, size in cls.backbone_inputs(cfg).items():
        try:
            check_backbone_input(arch, kw, size)
        except ValueError as e:
            return flag, str(e)
    return None


def smallest_working_size(cls: type[Method], cfg: dict, start: int, stop: int) -> int | None:
    """The smallest ``--image-size`` in [start, stop] with which ``cfg`` passes the method's and the backbone's
    checks (None if none does): what a "too small" message suggests."""
    return next((s for s in range(start, stop + 1) if _works(cls, {**cfg, "image_size": s})), None)


def _works(cls: type[Method], cfg: dict) -> bool:
    """Whether ``cfg`` passes the method's own checks and the backbone's (what parse time checks)."""
    try:
        cls.check_config(cfg)
        return _backbone_refusal(cls, cfg) is None
    except ConfigError:
        return False


def _values_that_work(cls: type[Method], cfg: dict, key: str, current: int, lo: int, hi: int) -> list[int]:
    """The nearest value of ``cfg[key]`` below and the nearest above ``current`` (within [lo, hi]) for which
    the config works (``_works``), nearest first."""
    below = next((v for v in range(current - 1, lo - 1, -1) if _works(cls, {**cfg, key: v})), None)
    above = next((v for v in range(current + 1, hi + 1) if _works(cls, {**cfg, key: v})), None)
    return sorted((v for v in (below, above) if v is not None), key=lambda v: (abs(v - current), v))


def check_backbone(cls: type[Method], cfg: dict) -> None:
    """The backbone's own constraints, where the flags are parsed (fastssl.cli.train.parse_config calls it after
    ``cls.check_config``): the network ``cfg`` builds must accept its ``--image-size`` and every input the
    method feeds it (``cls.backbone_inputs``, e.g. the tiles of jigsaw / context). The rules are the networks'
    own (``fastssl.models.check_backbone_input``: a ViT's patches must tile its size and every input; a ResNet
    takes any size). Raises ConfigError, one line naming ``--arch`` and the flag, the network's reason and
    values of that flag that work (every other check passes with them), e.g. ``--arch vit_tiny --image-size 50:
    img_size (50, 50) is not divisible by patch_size (4, 4) (...); --image-size 48 or 52 works``."""
    refusal = _backbone_refusal(cls, cfg)
    if refusal is None:
        return
    flag, why = refusal
    key = flag[2:].replace("-", "_")
    value = cls.backbone_inputs(cfg).get(flag, cfg.get(key))
    shown = f"{flag} {value}" + (" (its default)" if cfg.get(key) is None else "")
    if str(cfg["arch"]).startswith("vit"):
        patch = backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"])["patch_size"]
        why += (f" ({cfg['arch']} patches: {PATCH_RULE})" if key == "image_size" else
                f" ({cfg['arch']} cuts {patch} px patches at --image-size {cfg['image_size']} and sees each "
                f"{key.replace('_', ' ')} whole)")
    size = cfg["image_size"]
    if key != "image_size":
        good = _values_that_work(cls, cfg, key, value, 1, size)
        if good:
            raise ConfigError(f"--arch {cfg['arch']} {shown}: {why}; {flag} {' or '.join(map(str, good))} works")
    good = _values_that_work(cls, cfg, "image_size", size, 1, 2 * size + 64)
    hint = (f"--image-size {' or '.join(map(str, good))} works" if good else
            f"no --image-size up to {2 * size + 64} works with these flags")
    if key != "image_size":
        hint = f"no {flag} works at --image-size {size}; {hint}"
    raise ConfigError(f"--arch {cfg['arch']} {shown}: {why}; {hint}")


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
    def backbone_inputs(cls, cfg: dict) -> dict[str, int]:
        """The square inputs the backbone is fed, in px, by the flag that sets each (checked against the
        backbone's own rules at parse time, ``check_backbone``). Default: ``{"--image-size": S}`` (the views and
        the evaluation's centre crops). Raise ConfigError when the flags define no input."""
        return {"--image-size": cfg["image_size"]}

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
