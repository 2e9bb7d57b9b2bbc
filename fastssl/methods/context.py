"""Context prediction (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by Context
Prediction", sec. 3): a centre tile and one of its 8 neighbours on a 3x3 grid, each jittered inside its
cell (the gap keeps edges from being matched), through the same backbone (shared weights); the two feature
vectors are concatenated and an MLP predicts the neighbour's position (8-way cross-entropy). Shortcut
guards: per-tile normalization and colour dropping (sec. 4, against chromatic aberration).

The pair is cut on the batch's own device by ``fastssl.ops.sample_tiles``; the backbone is the ResNet of
the other methods (global pooling), so kNN / linear probes evaluate it on whole images.
"""

from __future__ import annotations

from fastssl.methods._tiles import GRID, TILE_IMAGE_SIZE, TileMethod, add_tile_args, arrange
from fastssl.methods.base import register
from fastssl.ops.sample_tiles import neighbour_cell

POSITIONS = 8
CENTRE = GRID * GRID // 2


@register("context")
class Context(TileMethod):
    recipe = "context"
    n_tiles = 2  # [centre, neighbour]
    picture_columns = ["centre", "neighbour", "true position", "predicted"]
    # Demo defaults, measured: docs/methods/context.md. 128 px (the demo's 64 px images upsampled): 32 px tiles
    # in 42 px cells, for jigsaw's reason (the scale gap of 16 px tiles; _tiles.py's TILE_IMAGE_SIZE).
    # 30 epochs: 10 and 60 were each worse on the demo at every tap from layer2 on (seed 0, 128 px).
    defaults = dict(arch="resnet18", width=16, image_size=TILE_IMAGE_SIZE, batch_size=256, epochs=30, optimizer="sgd",
                    lr=0.1, weight_decay=5e-4, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("context")
        add_tile_args(g, gray_p=0.0, drop_p=0.5)

    @staticmethod
    def num_classes(cfg):
        return POSITIONS

    def __init__(self, cfg):
        super().__init__(cfg)
        self.build_head()

    def picture_row(self, image, shown, true, guess):
        row = [image, shown[0], shown[1], arrange(shown, [CENTRE, neighbour_cell(true)]),
               arrange(shown, [CENTRE, neighbour_cell(guess)])]
        return row, f"pos {true}: pred {guess} {'ok' if true == guess else 'x'}"
