"""Backbones and heads (thin nn.Modules, no torchvision dependency).

``build_backbone(arch, **kw)`` builds one of ``ARCHS``; every backbone maps ``float [B, 3, H, W]``
to features ``[B, model.feature_dim]`` (``num_classes`` defaults to 0, i.e. no classifier).

channels_last: on CUDA, convolutions (ResNet, and the ViT patch embedding) run faster in NHWC,
especially with bf16/fp16 autocast (tensor-core kernels want NHWC). Use
``model = to_channels_last(model)`` once after moving the model to the GPU and feed inputs with
``x = x.contiguous(memory_format=torch.channels_last)``; results are the same as NCHW within
floating-point reordering. On a 2-core CPU (oneDNN) it measured 1.4-1.6x faster for a ResNet-18
training step too, so the trainer applies it on every device.

Exported backbones (``python -m fastssl.eval ... --export backbone.safetensors``) are safetensors
files (tensors + a string-to-string metadata header, no pickle, nothing runs when opened) whose
metadata records how to rebuild the network. ``save_backbone`` writes one, ``load_backbone(path)``
rebuilds it:

    model, meta = load_backbone("backbone.safetensors")   # nn.Module in eval mode, metadata dict

Format version 2 (written since fastssl issue 22) describes the network from the module itself
(``describe_backbone``): ``arch`` (the builder), ``kwargs`` = every constructor argument as built
(``model.config()``: ResNet ``width``, ``cifar_stem``, ``in_chans``, ...; ViT ``img_size``, ``patch_size``,
``pool``, ``pos_embed``, depth and widths, ...), ``input`` = the input conversion wrapped around it
(``rgb``: none; ``luminance``: colorize's :class:`~fastssl.models.inputs.LuminanceInput`), plus
``image_size``, ``feature_dim``, ``method``, the input normalization and the data. A network that cannot be
written down this way (another wrapper, a custom ``fc`` or norm layer) is refused by ``save_backbone``.

Version 1 files (before issue 22) recorded only ``img_size``/``patch_size`` (ViT) or ``width``/``cifar_stem``
(ResNet). They still load, with the constructors' defaults for everything else (exactly as before) except
where the file's ``method`` says the run built something else, which version 1 left out: ``mae`` and
``halves`` (their encoder always had ``pool="mean"``, ``pos_embed="sincos"``) and ``colorize`` (always a
1-channel ResNet in ``LuminanceInput``). Those values are filled in (``meta["filled_in"]`` lists them), so an
old MAE export computes the mean-pooled features its run evaluated, not the cls token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from fastssl.base.atomic import atomic_path

from .heads import LinearHead, MLPHead
from .inputs import INPUTS, LuminanceInput, StandardizedInput
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from .vit import PatchEmbed, VisionTransformer, check_patch_grid, vit_base, vit_small, vit_tiny

__all__ = [
    "ARCHS", "build_backbone", "check_backbone_input", "describe_backbone", "load_backbone", "save_backbone",
    "to_channels_last", "LuminanceInput", "StandardizedInput",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet50",
    "VisionTransformer", "PatchEmbed", "vit_tiny", "vit_small", "vit_base",
    "MLPHead", "LinearHead",
]

_BUILDERS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
}
ARCHS: tuple[str, ...] = tuple(_BUILDERS)


def build_backbone(arch: str, **kw) -> nn.Module:
    """Build a backbone by name; ``kw`` go to its constructor (e.g. ``cifar_stem=True, width=32`` for
    ResNets, ``img_size=32, patch_size=4`` for ViTs). Raises ``ValueError`` for an unknown name."""
    try:
        builder = _BUILDERS[arch]
    except (KeyError, TypeError):
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(ARCHS)}") from None
    return builder(**kw)


def check_backbone_input(arch: str, kwargs: dict, input_size: int | None = None) -> None:
    """Raise ValueError (the network's own message) if ``build_backbone(arch, **kwargs)`` would refuse to be
    built for its sizes, or refuse square inputs of ``input_size`` px. No network is built: the rules are the
    ones the constructors and forwards apply (ViT: ``vit.check_patch_grid`` on ``img_size`` and on every input;
    ResNet: any size >= 1)."""
    if arch not in _BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; valid names: {', '.join(ARCHS)}")
    if input_size is not None and input_size < 1:
        raise ValueError(f"input size {input_size} px is not positive")
    if arch.startswith("vit"):
        patch = kwargs.get("patch_size", 16)
        check_patch_grid(kwargs.get("img_size", 224), patch, "img_size")
        if input_size is not None:
            check_patch_grid(input_size, patch, "input size")


def describe_backbone(model: nn.Module) -> dict:
    """``{"arch", "kwargs", "input"}`` that rebuild ``model`` with :func:`build_described` (the same modules,
    parameter shapes and forward; the weights are not part of it), read from the module itself: ``arch`` and
    ``config()`` of the ResNet / ViT, ``input`` the conversion wrapped around it (``INPUTS``: ``rgb`` = none,
    ``luminance`` = :class:`LuminanceInput`, ``standardized`` = :class:`StandardizedInput`).
    Raises ValueError naming what cannot be described (another
    wrapper, a network not built by a builder of ``ARCHS``, a custom ``fc`` / norm layer)."""
    kind = getattr(model, "input_kind", "rgb")
    net = model.net if kind != "rgb" and INPUTS.get(kind) is type(model) else model
    if kind not in INPUTS or (kind != "rgb" and net is model):
        raise ValueError(f"a {type(model).__name__} backbone has an input conversion {kind!r} that fastssl cannot "
                         f"rebuild (known: {', '.join(INPUTS)})")
    if not isinstance(net, (ResNet, VisionTransformer)):
        raise ValueError(f"a {type(model).__name__} backbone is neither a ResNet nor a ViT (nor one of them in a known "
                         f"input wrapper: {', '.join(k for k, v in INPUTS.items() if v)}): its network cannot be "
                         "described as data")
    if getattr(net, "arch", None) not in _BUILDERS:
        raise ValueError(f"this {type(net).__name__} was not built by a builder of {', '.join(ARCHS)} "
                         "(build_backbone), so no arch name rebuilds it")
    return {"arch": net.arch, "kwargs": net.config(), "input": kind}


def build_described(arch: str, kwargs: dict, input: str = "rgb") -> nn.Module:  # noqa: A002 (the field's name)
    """The network :func:`describe_backbone` described: ``build_backbone(arch, **kwargs)``, wrapped in the
    input conversion ``INPUTS[input]``. ValueError / TypeError for an unknown arch, input or keyword."""
    if input not in INPUTS:
        raise ValueError(f"unknown input conversion {input!r} (known: {', '.join(INPUTS)})")
    net = build_backbone(arch, **kwargs)
    wrapper = INPUTS[input]
    return net if wrapper is None else wrapper(net)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert the model's 4-D parameters and buffers (conv weights) to ``torch.channels_last``
    in place and return the model. Meant for CUDA (see the module docstring); inputs should be
    converted too, ``x.contiguous(memory_format=torch.channels_last)``."""
    return model.to(memory_format=torch.channels_last)


BACKBONE_FORMAT = "fastssl-backbone"
BACKBONE_VERSION = "2"  # 2: kwargs = every constructor argument as built, plus "input" (module docstring)

# Version-1 files: what each method's backbone had that version 1 did not record (from the code of those
# versions: mae and halves always built their encoder with these, colorize always its LuminanceInput ResNet).
_V1_FILL = {
    "mae": ({"pool": "mean", "pos_embed": "sincos"}, "rgb"),
    "halves": ({"pool": "mean", "pos_embed": "sincos"}, "rgb"),
    "colorize": ({"in_chans": 1}, "luminance"),
}


def save_backbone(model: nn.Module, path: str | os.PathLike, arch: str | None = None, kwargs: dict | None = None,
                  **meta) -> Path:
    """Write ``model``'s state_dict as safetensors with the metadata ``load_backbone`` needs (format version 2).

    The network is described from the module itself (:func:`describe_backbone`); ``arch`` / ``kwargs``, if
    given (the version-1 call), must agree with that description. ``meta``: further facts stored as strings
    (JSON-encoded unless already str), e.g. image_size, method, mean, std. Written atomically (temp file +
    rename). Raises ValueError (nothing written) for a network that cannot be described, a disagreeing
    ``arch`` / ``kwargs``, or a module changed after it was built so that its description no longer rebuilds
    its parameters and buffers (names and shapes are compared).
    """
    from safetensors.torch import save_file

    spec = describe_backbone(model)
    if arch is not None and arch != spec["arch"]:
        raise ValueError(f"save_backbone: arch {arch!r} given, but the model is a {spec['arch']}")
    wrong = {k: v for k, v in (kwargs or {}).items() if spec["kwargs"].get(k, object()) != v}
    if wrong:
        raise ValueError(f"save_backbone: kwargs {wrong} disagree with the model's own {spec['kwargs']}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with torch.device("meta"):  # shapes only: no memory, no init
        rebuilt = build_described(spec["arch"], spec["kwargs"], spec["input"]).state_dict()
    have, want = {k: tuple(v.shape) for k, v in tensors.items()}, {k: tuple(v.shape) for k, v in rebuilt.items()}
    if have != want:
        diff = sorted(set(have) ^ set(want)) or sorted(k for k in have if have[k] != want[k])
        raise ValueError(f"save_backbone: the model's tensors differ from those of the network its description "
                         f"builds (was it changed after it was built?): {', '.join(diff[:5])}")
    header = {"format": BACKBONE_FORMAT, "version": BACKBONE_VERSION, "arch": spec["arch"],
              "kwargs": json.dumps(spec["kwargs"], sort_keys=True), "input": spec["input"],
              "feature_dim": str(getattr(model, "feature_dim", "")),
              **{k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def load_backbone(path: str | os.PathLike, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild an exported backbone from its file alone: (model in eval mode, metadata dict).

    Version 2 files give every constructor argument and the input conversion; version 1 files are read as
    the module docstring says (the constructors' defaults, plus what their ``method`` is known to have built,
    listed in ``meta["filled_in"]``). Raises ``fastssl.base.errors.DataError`` (one line, naming the file) when
    the file is missing, not safetensors, lacks fastssl's metadata, has a newer format version, names an
    unknown arch or input conversion, or its tensors do not fit the network the metadata describes. Metadata
    values that were JSON-encoded come back decoded.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastssl.base.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported backbone not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path), device=str(device))
    except Exception as e:  # noqa: BLE001 (safetensors raises its own error types)
        raise DataError(f"cannot read {path} as safetensors: {' '.join(str(e).split())[:200]}") from None
    if header.get("format") != BACKBONE_FORMAT:
        raise DataError(f"{path} is not a fastssl backbone export (no format={BACKBONE_FORMAT!r} metadata)")
    meta = {}
    for k, v in header.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    meta["arch"], meta["format"] = header["arch"], header["format"]
    meta["version"] = header.get("version") or "1"
    if meta["version"] not in ("1", BACKBONE_VERSION):
        raise DataError(f"{path}: backbone export format version {meta['version']!r}; this fastssl reads versions "
                        f"1 and {BACKBONE_VERSION} (a newer fastssl wrote it)")
    if meta["arch"] not in _BUILDERS or not isinstance(meta.get("kwargs"), dict):
        raise DataError(f"{path}: metadata names arch {meta['arch']!r} (known: {', '.join(ARCHS)}) "
                        f"with kwargs {header.get('kwargs')!r}")
    if meta["version"] == "1":
        fill, kind = _V1_FILL.get(meta.get("method"), ({}, "rgb"))
        added = {k: v for k, v in fill.items() if k not in meta["kwargs"]}
        meta["kwargs"] = {**meta["kwargs"], **added}
        meta["input"] = kind
        meta["filled_in"] = sorted(added) + (["input"] if kind != "rgb" else [])
    meta.setdefault("input", "rgb")
    if meta["input"] not in INPUTS:
        raise DataError(f"{path}: metadata names input conversion {meta['input']!r} (known: {', '.join(INPUTS)})")
    try:
        model = build_described(meta["arch"], meta["kwargs"], meta["input"])
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path}: the weights do not fit {meta['arch']}({json.dumps(meta['kwargs'])}"
                        f"{'' if meta['input'] == 'rgb' else ', input ' + meta['input']}): "
                        f"{' '.join(str(e).split())[:300]}") from None
    return model.to(device).eval(), meta
