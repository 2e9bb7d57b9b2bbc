"""Per-layer taps: the intermediate features the field evaluates, by name, from one forward pass.

Pretext tasks learn their best features in the middle of the network and contrastive ones at its end,
so linear evaluation taps several depths (Goyal et al. 2019 sec. 4 and VISSL's linear-evaluation configs;
Kolesnikov et al. 2019; the OpenSelfSup / mmselfsup zoo). Names (:func:`tap_names`):

ResNet (also inside a wrapper such as colorize's LuminanceInput):
  ``stem``    after conv1-bn-relu-maxpool (VISSL's conv1)        ``layer1`` .. ``layer4``  after each stage
  ``pool``    the backbone's output (global average pool: what kNN evaluated before taps existed)
ViT (depth d):
  ``block{k}`` for k in d/4, d/2, 3d/4, d (1-based: ``block3``, ``block6``, ``block9``, ``block12`` at
  d = 12): the cls token and the mean of the patch tokens after block k, concatenated (2D wide);
  ``norm``    the same after the final LayerNorm;   ``pool``  the backbone's output (cls or mean, as built).

Each spatial ResNet tap ``[B, C, H, W]`` is average-pooled to ``s x s`` with
``s = min(H, max(1, floor(sqrt(TARGET_WIDTH / C))))`` and flattened, so its width ``C*s*s`` is about
VISSL's 9k wherever the map is large enough (VISSL pools res2 with kernel 16 stride 8 -> 9216, res3 13/5 ->
8192, res4 8/3 -> 9216, res5 6/1 -> 8192 for ResNet-50 at 224 px). The rule gives:

  ResNet-50, 224 px:        stem 64x12x12 = 9216, layer1 256x6x6 = 9216, layer2 512x4x4 = 8192,
                            layer3 1024x3x3 = 9216, layer4 2048x2x2 = 8192, pool 2048
  ResNet-18 w16, 64 px      stem 16x16x16 = 4096, layer1 16x16x16 = 4096, layer2 32x8x8 = 2048,
  (the demo):               layer3 64x4x4 = 1024, layer4 128x2x2 = 512, pool 128
  ResNet-18 w64, 224 px:    stem 64x12x12 = 9216, layer1 64x12x12 = 9216, layer2 128x8x8 = 8192,
                            layer3 256x6x6 = 9216, layer4 512x4x4 = 8192, pool 512

(the demo's small maps cap the width below 2k at layer3/layer4: there the whole map is kept). The probes
standardize each tap with the training split's statistics (fastssl.evaluation.linear).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastssl.models import ResNet, VisionTransformer

TARGET_WIDTH = 9216  # VISSL's res2/res4 width
RESNET_TAPS = ("stem", "layer1", "layer2", "layer3", "layer4", "pool")


def trunk(backbone: nn.Module) -> nn.Module:
    """The ResNet or ViT inside ``backbone`` (itself, or the first one among its modules); ValueError if none."""
    for m in backbone.modules():
        if isinstance(m, (ResNet, VisionTransformer)):
            return m
    raise ValueError(f"{type(backbone).__name__} holds no ResNet or VisionTransformer: no per-layer taps")


def vit_blocks(depth: int) -> list[int]:
    """The 1-based block indices tapped in a ViT of ``depth`` blocks: d/4, d/2, 3d/4, d (distinct)."""
    return sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)})


def tap_names(backbone: nn.Module) -> list[str]:
    """Every tap of ``backbone``, shallow to deep (module docstring)."""
    t = trunk(backbone)
    if isinstance(t, ResNet):
        return list(RESNET_TAPS)
    return [f"block{k}" for k in vit_blocks(len(t.blocks))] + ["norm", "pool"]


def default_taps(backbone: nn.Module, kind: str) -> list[str]:
    """A method's default taps (``Method.eval_taps``): ``"intermediate"`` (pretext tasks, whose features
    peak mid-network): ResNet layer1..layer4 + pool, ViT the quarter-depth blocks + pool; ``"output"``
    (contrastive): ResNet layer4 + pool, ViT norm + pool."""
    names = tap_names(backbone)
    if kind == "intermediate":
        return [n for n in names if n not in ("stem", "norm")]
    if kind == "output":
        return [n for n in names if n in ("layer4", "norm", "pool")]
    raise ValueError(f"eval_taps must be 'intermediate' or 'output', got {kind!r}")


def pooled_side(channels: int, side: int, target: int = TARGET_WIDTH) -> int:
    """The side ``s`` a ``channels x side x side`` map is average-pooled to (module docstring)."""
    return min(side, max(1, math.isqrt(target // channels)))


def _pool_map(x: torch.Tensor) -> torch.Tensor:
    s = pooled_side(x.shape[1], min(x.shape[2], x.shape[3]))
    return F.adaptive_avg_pool2d(x.float(), s).flatten(1)


def _cls_and_mean(tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=1).float()


class Taps:
    """Run ``backbone`` once and return the named taps: ``Taps(backbone, names)(x) -> {name: [B, D] float32}``.

    Forward hooks on the trunk's modules pool each tap as soon as it is computed (so a later in-place op
    cannot change it). Raises ValueError naming the valid taps for an unknown name.
    """

    def __init__(self, backbone: nn.Module, names: list[str]):
        valid = tap_names(backbone)
        bad = [n for n in names if n not in valid]
        if bad:
            raise ValueError(f"unknown tap(s) {', '.join(bad)}; this backbone's taps: {', '.join(valid)}")
        self.backbone, self.names = backbone, list(names)
        t = trunk(backbone)
        if isinstance(t, ResNet):
            modules = {"stem": t.maxpool, **{f"layer{i}": getattr(t, f"layer{i}") for i in range(1, 5)}}
            self._hooked = {n: (modules[n], _pool_map) for n in names if n != "pool"}
        else:
            modules = {f"block{k}": t.blocks[k - 1] for k in vit_blocks(len(t.blocks))}
            modules["norm"] = t.norm
            self._hooked = {n: (modules[n], _cls_and_mean) for n in names if n != "pool"}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        handles = []
        for name, (module, reduce) in self._hooked.items():
            def hook(mod, inp, out, name=name, reduce=reduce):
                got[name] = reduce(out)
            handles.append(module.register_forward_hook(hook))
        try:
            out = self.backbone(x)
        finally:
            for h in handles:
                h.remove()
        if "pool" in self.names:
            got["pool"] = out.float()
        return {n: got[n] for n in self.names}
