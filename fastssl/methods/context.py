"""Context prediction (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by Context
Prediction", sec. 3): a centre tile and one of its 8 neighbours on a 3x3 grid, each jittered inside its
cell (the gap keeps edges from being matched), through the same backbone (shared weights); the two feature
vectors are concatenated and an MLP predicts the neighbour's position (8-way cross-entropy). Shortcut
guards: per-tile normalization and colour dropping (sec. 4, against chromatic aberration).

The pair is cut on the batch's own device by ``fastssl.ops.sample_tiles``; the backbone is the ResNet of
the other methods (global pooling), so kNN / linear probes evaluate it on whole images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.methods._tiles import GRID, add_tile_args, arrange, check_tile_config, tile_size
from fastssl.methods.base import Method, register
from fastssl.models import MLPHead
from fastssl.ops import sample_tiles
from fastssl.ops.sample_tiles import neighbour_cell, sample_tiles_op

POSITIONS = 8


@register("context")
class Context(Method):
    recipe = "context"
    # Demo defaults (64 px, 16 px tiles in 21 px cells), measured: README "Tile pretext tasks".
    defaults = dict(arch="resnet18", width=16, image_size=64, batch_size=256, epochs=30, optimizer="sgd",
                    lr=0.1, weight_decay=5e-4, warmup_epochs=1)

    @staticmethod
    def add_args(parser):
        g = parser.add_argument_group("context")
        add_tile_args(g, gray_p=0.0, drop_p=0.5)

    @classmethod
    def check_config(cls, cfg):
        check_tile_config(cfg)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tile = tile_size(cfg)
        sample_tiles_op()  # load the extension now, not inside a torch.compile trace
        self.head = MLPHead(2 * self.backbone.feature_dim, cfg["head_hidden"], POSITIONS, num_layers=2)

    def _tiles(self, x, generator=None):
        c = self.cfg
        return sample_tiles(x, "context", tile=self.tile, grid=GRID, normalize=not c["no_tile_norm"],
                            gray_p=c["gray_p"], drop_p=c["drop_p"], generator=generator)

    def logits(self, pair: torch.Tensor) -> torch.Tensor:
        """pair (B, 2, C, t, t) = [centre, neighbour] -> position logits (B, 8)."""
        B = pair.shape[0]
        f = self.backbone(pair.flatten(0, 1).contiguous(memory_format=torch.channels_last))
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
        r = self._tiles(x, generator=torch.Generator().manual_seed(0))  # the same pairs every epoch
        pred = self.logits(r.tiles).argmax(1).cpu()
        images = denormalize(x)
        shown = sample_tiles(images, "context", tile=self.tile, grid=GRID, draws=r.draws.cpu()).tiles
        centre = GRID * GRID // 2
        rows, titles = [], []
        for b in range(x.shape[0]):
            true, guess = int(r.labels[b]), int(pred[b])
            rows.append([images[b], shown[b, 0], shown[b, 1], arrange(shown[b], [centre, neighbour_cell(true)]),
                         arrange(shown[b], [centre, neighbour_cell(guess)])])
            titles.append(f"pos {true}: pred {guess} {'ok' if true == guess else 'x'}")
        save_grid(rows, path, row_titles=titles,
                  col_titles=[f"epoch {epoch}", "centre", "neighbour", "true position", "predicted"])
