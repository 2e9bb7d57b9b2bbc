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

from fastssl.methods._tiles import GRID, TILE_IMAGE_SIZE, TileMethod, add_tile_args, arrange
from fastssl.methods.base import register
from fastssl.ops import jigsaw_permutations

MAX_PERMUTATIONS = 1000  # the largest set of the paper; the greedy search takes seconds


def _permutations(text: str) -> int:
    value = int(text)
    if not 2 <= value <= MAX_PERMUTATIONS:
        raise argparse.ArgumentTypeError(f"must be in [2, {MAX_PERMUTATIONS}] (9! = {math.factorial(9)}), "
                                         f"got {value}")
    return value


@register("jigsaw")
class Jigsaw(TileMethod):
    recipe = "jigsaw"
    n_tiles = GRID * GRID  # in the shuffled order
    picture_columns = ["shuffled", "true order", "predicted order"]
    # Demo defaults, measured: docs/methods/jigsaw.md. 128 px (TILE_IMAGE_SIZE: the scale gap) and 5 epochs, not
    # 15: at 64 px, longer training made every tap worse.
    defaults = dict(arch="resnet18", width=16, image_size=TILE_IMAGE_SIZE, batch_size=256, epochs=5, optimizer="sgd",
                    lr=0.1, weight_decay=5e-4, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("jigsaw")
        g.add_argument("--permutations", type=_permutations, default=100,
                       help="K, the size of the permutation set (classes); the paper uses 100 and 1000")
        add_tile_args(g, gray_p=0.3, drop_p=0.0)

    @staticmethod
    def num_classes(cfg):
        return cfg["permutations"]

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("perms", jigsaw_permutations(cfg["permutations"], GRID * GRID, "maxmin", seed=0))
        self.build_head()

    def sample_kwargs(self):
        return {"perms": self.perms}

    def picture_row(self, image, shown, true, guess):
        perms = self.perms.cpu()
        row = [image, arrange(shown, list(range(GRID * GRID))), arrange(shown, perms[true].tolist()),
               arrange(shown, perms[guess].tolist())]
        return row, f"perm {true}: pred {guess} {'ok' if true == guess else 'x'}"
