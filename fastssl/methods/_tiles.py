"""Shared parts of the tile pretext methods (jigsaw, context): flags, the tile size, the method skeleton
(:class:`TileMethod`: tiles -> shared backbone -> concatenated features -> classifier) and picture helpers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.base.argtypes import positive_int, probability  # noqa: F401  (flag types of the tile methods)
from fastssl.base.errors import ConfigError
from fastssl.methods.base import Method, smallest_working_size
from fastssl.models import MLPHead
from fastssl.ops import sample_tiles
from fastssl.ops.sample_tiles import sample_tiles_op

GRID = 3  # 3x3 cells, as in both papers


def tile_size(cfg: dict) -> int:
    """``--tile``, or 3/4 of a cell (Noroozi & Favaro: 64 px tiles in 85 px cells): 16 px at 64 px."""
    return cfg["tile"] or max(1, round(0.75 * (cfg["image_size"] // GRID)))


def add_tile_args(group, gray_p: float, drop_p: float) -> None:
    group.add_argument("--tile", type=positive_int, default=None,
                       help="tile side in px (default: 3/4 of a grid cell, 16 px at --image-size 64)")
    group.add_argument("--gray-p", type=probability, default=gray_p, help="per-sample grayscale probability")
    group.add_argument("--drop-p", type=probability, default=drop_p,
                       help="per-sample colour dropping probability (keep one random channel)")
    group.add_argument("--no-tile-norm", action="store_true",
                       help="skip the per-tile mean/std normalization (on by default: a shortcut guard)")
    group.add_argument("--head-hidden", type=positive_int, default=1024, help="classifier MLP hidden width")


def check_tile_config(cfg: dict, method: type[Method] | None = None) -> None:
    """ConfigError unless a tile fits a grid cell. Every suggested value works: ``--tile <= cell`` when there is
    a cell of at least 1 px; when ``--image-size`` is below the grid (no cell at all) the smallest image size
    that passes every check of ``method`` (and its backbone's, ``fastssl.methods.base.check_backbone``), or
    without a method the smallest that holds the tiles (``GRID`` px, or ``GRID * --tile``)."""
    s, t, cell = cfg["image_size"], tile_size(cfg), cfg["image_size"] // GRID
    if cell < 1:
        need, stop = GRID * (cfg["tile"] or 1), max(64, 4 * GRID * (cfg["tile"] or 1))
        if method is not None:  # sizes >= need have cells, so this search never comes back here
            need = smallest_working_size(method, cfg, need, stop)
        flags = f"--arch {cfg['arch']}" + (f" and --tile {cfg['tile']}" if cfg["tile"] else "")
        raise ConfigError(f"--image-size {s} is too small for a {GRID}x{GRID} grid of tiles (cells of {s / GRID:.2g} "
                          "px); " + (f"the smallest --image-size that works with {flags} is {need}" if need else
                                     f"no --image-size up to {stop} works with {flags}"))
    if t > cell:
        raise ConfigError(f"--tile {t} does not fit a grid cell of {cell} px (--image-size {s} "
                          f"in a {GRID}x{GRID} grid); use --tile <= {cell}")


def arrange(tiles: torch.Tensor, cells: list[int], grid: int = GRID, gap: int = 2, fill: float = 1.0) -> torch.Tensor:
    """Place tiles ``(n, C, t, t)`` at grid ``cells`` (row-major) of a ``grid x grid`` canvas with gaps;
    empty cells stay ``fill``. Returns ``(C, side, side)`` for ``fastssl.base.viz.save_grid``."""
    n, C, t, _ = tiles.shape
    side = grid * t + (grid - 1) * gap
    canvas = torch.full((C, side, side), fill, dtype=tiles.dtype)
    for k, cell in enumerate(cells):
        y, x = divmod(int(cell), grid)
        canvas[:, y * (t + gap):y * (t + gap) + t, x * (t + gap):x * (t + gap) + t] = tiles[k]
    return canvas


class TileMethod(Method):
    """A tile task: ``sample_tiles(kind)`` cuts ``n_tiles`` tiles of each image and a label; every tile goes
    through the backbone (shared weights), the features are concatenated in the tiles' order and an MLP
    predicts the label (cross-entropy). Subclasses set ``recipe`` (= the sample_tiles kind), ``n_tiles``,
    ``num_classes(cfg)``, and ``picture_row`` / ``picture_columns`` for the picture; ``sample_kwargs()``
    adds kind-specific arguments of sample_tiles (jigsaw's permutation set)."""

    n_tiles: int = 0
    picture_columns: list[str] = []

    @classmethod
    def check_config(cls, cfg):
        check_tile_config(cfg, cls)

    @classmethod
    def backbone_inputs(cls, cfg):
        """The whole images (evaluation; the backbone is built at ``--image-size``) and the tiles (training)."""
        check_tile_config(cfg)
        return {"--image-size": cfg["image_size"], "--tile": tile_size(cfg)}

    @staticmethod
    def num_classes(cfg: dict) -> int:
        raise NotImplementedError

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tile = tile_size(cfg)
        sample_tiles_op()  # load the extension now, not inside a torch.compile trace

    def build_head(self) -> None:
        """The classifier on the ``n_tiles`` concatenated features (after subclass buffers are set)."""
        self.head = MLPHead(self.n_tiles * self.backbone.feature_dim, self.cfg["head_hidden"],
                            self.num_classes(self.cfg), num_layers=2)

    def sample_kwargs(self) -> dict:
        return {}

    def sample(self, x: torch.Tensor, generator=None, draws=None):
        """``fastssl.ops.sample_tiles`` of this task on images ``x`` (B, C, H, W) with the run's guards."""
        c = self.cfg
        return sample_tiles(x, self.recipe, tile=self.tile, grid=GRID, normalize=not c["no_tile_norm"],
                            gray_p=c["gray_p"], drop_p=c["drop_p"], generator=generator, draws=draws,
                            **self.sample_kwargs())

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """tiles (B, n_tiles, C, t, t) -> class logits (B, num_classes)."""
        B = tiles.shape[0]
        f = self.backbone(tiles.flatten(0, 1).contiguous(memory_format=torch.channels_last))
        return self.head(f.reshape(B, -1))

    def forward(self, views, labels):
        r = self.sample(views[0])
        logits = self.logits(r.tiles).float()
        loss = F.cross_entropy(logits, r.labels)
        with torch.no_grad():
            acc = (logits.argmax(1) == r.labels).float().mean()
        return loss, {"acc": acc}

    def picture_row(self, image, shown, true: int, guess: int) -> tuple[list, str]:
        """(the row's images, its title) for one image of the picture."""
        raise NotImplementedError

    def visualize(self, views, labels, path, epoch):
        from fastssl.base.viz import denormalize, save_grid

        x = views[0][:6]
        r = self.sample(x, generator=torch.Generator().manual_seed(0))  # the same draws every epoch
        pred = self.logits(r.tiles).argmax(1).cpu()
        images = denormalize(x)
        kw = {k: v.cpu() for k, v in self.sample_kwargs().items()}
        shown = sample_tiles(images, self.recipe, tile=self.tile, grid=GRID, draws=r.draws.cpu(), **kw).tiles
        rows, titles = [], []
        for b in range(x.shape[0]):
            row, title = self.picture_row(images[b], shown[b], int(r.labels[b]), int(pred[b]))
            rows.append(row)
            titles.append(title)
        save_grid(rows, path, row_titles=titles, col_titles=[f"epoch {epoch}", *self.picture_columns])
