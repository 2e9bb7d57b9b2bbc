"""Diagnose a trained tile-method backbone (jigsaw, context): how it reads whole images at evaluation.

    python benches/tile_diagnosis.py --checkpoint RUN [--data ROOT] [--linear-epochs 30]

Loads the evaluation images once (the ``eval`` recipe), then probes the learned network and the run's
random initialization at layer1..layer4 and pool (kNN k=20 T=0.07, optionally a linear probe) under
variants of what the network is given at evaluation:

- ``as-is``        the protocol of ``python -m fastssl.eval`` (BN running statistics from training);
- ``bn-recal``     the BN running statistics re-estimated on whole training images (train-mode forward
                   passes, cumulative average, no gradient), weights unchanged: tells whether the statistics
                   gathered on tiles are what hurts;
- ``img-norm``     each image standardized per channel (the normalization every training tile got);
- ``img-norm+bn``  both;
- ``half``         each image resized to half its size (64 -> 32 px: layer4 1x1, as on a training tile);
- ``tiles``        each image cut into a grid of tiles the size of a training tile (``tile_grid``: 4x4 of
                   16 px at 64 px, of 32 px at 128 px), every tile through the network on its own, each
                   tap's features averaged over the tiles: the network at the scale it was trained on.
                   ``half`` and ``tiles`` test the scale gap (docs/methods/jigsaw.md).

The numbers are a diagnosis, not the reported protocol (the protocol is ``python -m fastssl.eval``).

    python benches/tile_diagnosis.py --checkpoint RUN --convert tiles OLD_RUN

writes OLD_RUN/last.pt: the run's weights as the network of ``--tile-norm tiles`` (fastssl before the fix:
the standardization only in the tile sampler, none at evaluation); ``--convert input NEW_RUN`` the reverse.
Training computes the same thing in both placements (tests/engine/test_tile_norm.py), so
``python -m fastssl.eval ... --checkpoint OLD_RUN`` gives the old protocol's numbers for the very same
weights, random init included, without a second training run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch
from torch import nn

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # this checkout's fastssl

from fastssl.data import dataset_splits, make_loader
from fastssl.evaluation import backbone_from_checkpoint
from fastssl.evaluation.knn import knn_classify
from fastssl.evaluation.linear import linear_probe
from fastssl.evaluation.taps import Taps
from fastssl.methods._tiles import tile_size

TAPS = ["layer1", "layer2", "layer3", "layer4", "pool"]


def load_images(src, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = make_loader(src, "eval", batch_size=min(256, len(src)), epoch=0, seed=0, device="cpu",
                         image_size=image_size, num_threads=2, drop_last=False, shuffle=False)
    xs, ys = [], []
    for views, y in loader:
        xs.append(views[0].float().cpu())
        ys.append(y.cpu())
    return torch.cat(xs), torch.cat(ys)


def per_image_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    m = x.mean((2, 3), keepdim=True)
    v = x.var((2, 3), unbiased=False, keepdim=True)
    return (x - m) / (v + eps).sqrt()


@torch.no_grad()
def recalibrate_bn(backbone: nn.Module, x: torch.Tensor, batch: int = 256) -> nn.Module:
    """A copy of ``backbone`` whose BN running statistics are the cumulative average over ``x`` (train mode)."""
    b = copy.deepcopy(backbone)
    for m in b.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    b.train()
    for i in range(0, len(x), batch):
        b(x[i:i + batch])
    return b.eval()


def tile_grid(cfg: dict) -> int:
    """How many training tiles fit along a side of the run's image: ``--image-size // tile``, the tile being the
    run's (``--tile`` or its default, ``fastssl.methods._tiles.tile_size``): 4 at 64 px (16 px tiles) and at
    128 px (32 px tiles)."""
    return cfg["image_size"] // tile_size(cfg)


def grid_tiles(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * grid * grid, C, H // grid, W // grid): the image's grid x grid tiles, image-major."""
    n, c, h, w = x.shape
    th, tw = h // grid, w // grid
    t = x[:, :, :th * grid, :tw * grid].reshape(n, c, grid, th, grid, tw)
    return t.permute(0, 2, 4, 1, 3, 5).reshape(n * grid * grid, c, th, tw)


@torch.no_grad()
def taps_of(backbone: nn.Module, x: torch.Tensor, batch: int = 256, grid: int = 0) -> dict[str, torch.Tensor]:
    """Pooled features at every tap; ``grid`` > 0: of each image's grid x grid tiles, averaged per image."""
    backbone.eval()
    t = Taps(backbone, TAPS)
    out: dict[str, list] = {n: [] for n in TAPS}
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        for n, v in t(grid_tiles(xb, grid) if grid else xb).items():
            out[n].append(v.reshape(len(xb), grid * grid, -1).mean(1) if grid else v)
    return {n: torch.cat(v) for n, v in out.items()}


def probe(backbone, xtr, ytr, xva, yva, n_cls, linear_epochs: int, grid: int = 0) -> dict:
    ftr, fva = taps_of(backbone, xtr, grid=grid), taps_of(backbone, xva, grid=grid)
    res = {}
    for n in TAPS:
        r = {"knn": knn_classify(ftr[n], ytr, fva[n], yva, num_classes=n_cls)["top1"]}
        if linear_epochs:
            r["linear"] = linear_probe(ftr[n], ytr, fva[n], yva, epochs=linear_epochs, num_classes=n_cls)["top1"]
        res[n] = r
    return res


@torch.no_grad()
def pretext_probe(checkpoint: str, x: torch.Tensor, ring: int = 2, batch: int = 128) -> dict:
    """The pretext accuracy (%) of the trained method on images ``x`` with the tiles as cut, with a ``ring`` px
    border of every tile set to the tile's mean (0 after standardization), and with a central square of the same
    area set to it instead. Much worse without the border than without the centre: the task is solved at the
    tile edges (continuity across the gap), a shortcut the papers' gap is meant to remove."""
    from pathlib import Path

    from fastssl.base import checkpoint as ckpt_io
    from fastssl.methods import build_method

    path = Path(checkpoint)
    ckpt = ckpt_io.load(path / "last.pt" if path.is_dir() else path, required=("model", "config"))
    m = build_method(ckpt["config"]["method"], ckpt["config"])
    m.load_state_dict(ckpt["model"])
    m.eval()
    t = m.tile
    border = torch.ones(t, t, dtype=torch.bool)
    border[ring:t - ring, ring:t - ring] = False
    side = round((int(border.sum())) ** 0.5)  # a central square of (about) the ring's area
    centre = torch.zeros(t, t, dtype=torch.bool)
    lo = (t - side) // 2
    centre[lo:lo + side, lo:lo + side] = True
    hits = {"tiles": 0, f"no {ring}px border": 0, f"no centre {side}x{side}": 0}
    g = torch.Generator().manual_seed(0)
    for i in range(0, len(x), batch):
        r = m.sample(x[i:i + batch], generator=g)
        tiles = r.tiles
        if m.tile_norm == "input":
            tiles = m.backbone.standardize(tiles.flatten(0, 1)).view_as(tiles)
        for key, mask in zip(hits, (None, border, centre)):
            v = tiles if mask is None else tiles.masked_fill(mask, 0.0)
            if m.tile_norm == "input":  # already standardized: feed the inner network
                B = v.shape[0]
                logits = m.head(m.backbone.net(v.flatten(0, 1)).reshape(B, -1))
            else:
                logits = m.logits(v)
            hits[key] += int((logits.argmax(1) == r.labels).sum())
    return {k: 100.0 * v / len(x) for k, v in hits.items()}


def convert(checkpoint: str, out: str, to: str) -> None:
    """Write ``out/last.pt`` (+ config.json): ``checkpoint``'s weights as the network of ``--tile-norm to``
    ("tiles": the standardization only in the sampler; "input": in the backbone). Training computes the same
    thing in both placements (tests/engine/test_tile_norm.py); only what evaluation feeds the network differs."""
    from pathlib import Path

    from fastssl.base import checkpoint as ckpt_io
    from fastssl.methods._tiles import tile_norm

    path = Path(checkpoint)
    ckpt = ckpt_io.load(path / "last.pt" if path.is_dir() else path, required=("model", "config"))
    cfg = dict(ckpt["config"])
    src = tile_norm(cfg)
    if {src, to} != {"input", "tiles"}:
        raise SystemExit(f"{checkpoint}: its --tile-norm is {src!r}; convert between 'input' and 'tiles' only")
    cfg["tile_norm"], cfg["no_tile_norm"] = to, False
    a, b = ("backbone.net.", "backbone.") if to == "tiles" else ("backbone.", "backbone.net.")
    model = {(b + k[len(a):] if k.startswith(a) else k): v for k, v in ckpt["model"].items()}
    Path(out).mkdir(parents=True, exist_ok=True)
    ckpt_io.atomic_save({"model": model, "config": cfg}, Path(out) / "last.pt")
    (Path(out) / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="dataset root (default: the run's)")
    p.add_argument("--linear-epochs", type=int, default=0, help="also a linear probe of this many epochs (0: kNN only)")
    p.add_argument("--variants", default="as-is,bn-recal,img-norm,img-norm+bn",
                   help="comma list of as-is, bn-recal, img-norm, img-norm+bn, half, tiles")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--pretext", action="store_true",
                   help="only the pretext accuracy on val images: tiles as cut, without their border, without "
                   "their centre (pretext_probe)")
    p.add_argument("--convert", nargs=2, default=None, metavar=("TO", "OUT"),
                   help="only write OUT/last.pt: the weights as the --tile-norm TO network (tiles or input)")
    a = p.parse_args(argv)
    if a.convert:
        convert(a.checkpoint, a.convert[1], a.convert[0])
        return 0
    torch.set_num_threads(2)
    learned, cfg = backbone_from_checkpoint(a.checkpoint)
    rand, _ = backbone_from_checkpoint(a.checkpoint, random_init=True)
    root = a.data or cfg["data"]
    tr_src, va_src = dataset_splits(root)
    t0 = time.perf_counter()
    xtr, ytr = load_images(tr_src, cfg["image_size"]) if not a.pretext else (None, None)
    xva, yva = load_images(va_src, cfg["image_size"])
    n_cls = len(tr_src.classes)
    if a.pretext:
        res = pretext_probe(a.checkpoint, xva)
        print("pretext accuracy (%) on val images: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"checkpoint": a.checkpoint, "data": str(root), "pretext": res}, f, indent=1)
        return 0
    results = {}
    for variant in a.variants.split(","):
        for which, net in (("learned", learned), ("random", rand)):
            tr, va = (per_image_norm(xtr), per_image_norm(xva)) if variant.startswith("img-norm") else (xtr, xva)
            if variant == "half":
                tr, va = (nn.functional.interpolate(v, scale_factor=0.5, mode="bilinear", antialias=True)
                          for v in (tr, va))
            if variant.endswith("bn") or variant == "bn-recal":
                net = recalibrate_bn(net, tr)
            grid = tile_grid(cfg) if variant == "tiles" else 0
            results[f"{variant}/{which}"] = probe(net, tr, ytr, va, yva, n_cls, a.linear_epochs, grid)
            row = "  ".join(f"{n} " + "/".join(f"{v:5.1f}" for v in r.values()) for n, r in
                            results[f"{variant}/{which}"].items())
            print(f"{variant:>12} {which:>7}: {row}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"checkpoint": a.checkpoint, "data": str(root), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
