"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", sec. 3): cut a 3x3 grid of jittered tiles, shuffle them by one of K permutations (chosen for
maximal minimum Hamming distance, ``fastssl.ops.jigsaw_permutations``), pass every tile through the same
backbone (siamese, shared weights), concatenate the 9 feature vectors in the shuffled order and classify
the permutation (K-way cross-entropy).

Tiles are cut on the batch's own device by ``fastssl.ops.sample_tiles`` (one C++/CUDA kernel: jitter,
permutation, per-tile normalization, random grayscale), not per sample in PIL. The backbone is the
ResNet of the other methods (global pooling), so kNN / linear probes evaluate it on whole images.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from fastssl.methods._tiles import GRID, add_tile_args, arrange, check_tile_config, tile_size
from fastssl.methods.base import Method, register
from fastssl.models import MLPHead
from fastssl.ops import jigsaw_permutations, sample_tiles
from fastssl.ops.sample_tiles import sample_tiles_op

MAX_PERMUTATIONS = 1000  # the largest set of the paper; the greedy search takes seconds


def _permutations(text: str) -> int:
    value = int(text)
    if not 2 <= value <= MAX_PERMUTATIONS:
        raise argparse.ArgumentTypeError(f"must be in [2, {MAX_PERMUTATIONS}] (9! = {math.factorial(9)}), "
                                         f"got {value}")
    return value


@register("jigsaw")
class Jigsaw(Method):
    recipe = "jigsaw"
    # Demo defaults (64 px, 16 px tiles in 21 px cells), measured: README "Tile pretext tasks".
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=256, epochs=15, optimizer="sgd",
                    lr=0.1, weight_decay=5e-4, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("jigsaw")
        g.add_argument("--permutations", type=_permutations, default=100,
                       help="K, the size of the permutation set (classes); the paper uses 100 and 1000")
        add_tile_args(g, gray_p=0.3, drop_p=0.0)

    @classmethod
    def check_config(cls, cfg):
        check_tile_config(cfg)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tile = tile_size(cfg)
        sample_tiles_op()  # load the extension now, not inside a torch.compile trace
        self.register_buffer("perms", jigsaw_permutations(cfg["permutations"], GRID * GRID, "maxmin", seed=0))
        self.head = MLPHead(GRID * GRID * self.backbone.feature_dim, cfg["head_hidden"], cfg["permutations"],
                            num_layers=2)

    def _tiles(self, x, generator=None, draws=None):
        c = self.cfg
        return sample_tiles(x, "jigsaw", tile=self.tile, perms=self.perms, grid=GRID,
                            normalize=not c["no_tile_norm"], gray_p=c["gray_p"], drop_p=c["drop_p"],
                            generator=generator, draws=draws)

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, 9, C, t, t) in the shuffled order -> permutation logits (B, K)."""
        B = tiles.shape[0]
        f = self.backbone(tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return self.head(f.reshape(B, -1))

    def forward(self, views, labels):
        r = self._tiles(views[0])
        logits = self.logits(r.tiles).float()
        loss = F.cross_entropy(logits, r.labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == r.labels).float().mean()
        return loss, {"acc": acc}

    def visualize(self, views, labels, path, epoch):
        from fastssl.viz import denormalize, save_grid

        x = views[0][:6]
        r = self._tiles(x, generator=torch.Generator().manual_seed(0))  # the same puzzles every epoch
        pred = self.logits(r.tiles).argmax(1).cpu()
        images = denormalize(x)
        perms = self.perms.cpu()
        shown = sample_tiles(images, "jigsaw", tile=self.tile, perms=perms, grid=GRID, draws=r.draws.cpu()).tiles
        rows, titles = [], []
        for b in range(x.shape[0]):
            true, guess = int(r.labels[b]), int(pred[b])
            rows.append([images[b], arrange(shown[b], list(range(GRID * GRID))),
                         arrange(shown[b], perms[true].tolist()), arrange(shown[b], perms[guess].tolist())])
            titles.append(f"perm {true}: pred {guess} {'ok' if true == guess else 'x'}")
        save_grid(rows, path, row_titles=titles,
                  col_titles=[f"epoch {epoch}", "shuffled", "true order", "predicted order"])
