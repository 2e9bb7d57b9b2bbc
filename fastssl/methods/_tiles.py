"""Shared parts of the tile pretext methods (jigsaw, context): flags, the tile size, the method skeleton
(:class:`TileMethod`: tiles -> shared backbone -> concatenated features -> classifier) and picture helpers.

Per-tile normalization, and where it lives (``--tile-norm``). Both papers standardize every tile with its own
per-channel mean and std (Noroozi & Favaro sec. 3.2: otherwise adjacent tiles are matched by their low-level
statistics). Done in the tile sampler only (``--tile-norm tiles``, fastssl before this fix), the network is trained
on standardized tiles but evaluated on whole images that are not standardized (the dataset mean / std of the
``eval`` recipe): a change of input statistics its first layers never saw. On the demo that made the learned
features WORSE than the same network at random init at every layer (kNN 21.2 / 22.3 / 18.8 / 16.2 / 15.8 at
layer1..layer4 / pool against 25.4 / 25.3 / 24.2 / 22.5 / 22.6, 5 epochs), while the very same weights fed
standardized whole images scored 58.7 / 59.0 / 54.0 / 40.9 / 37.2 against 48.8 / 42.3 / 39.0 / 37.4 / 36.8
(re-estimating the BN statistics on whole images did not help: 21.5 / 21.2 / 19.9 / 18.4 / 15.4);
docs/methods/jigsaw.md ("Why jigsaw's features were worse than random init") has the commands. The default ``--tile-norm
input`` therefore makes the standardization part of the backbone (:class:`StandardizedInput`): it standardizes each
tile in training, the same computation as the sampler's, and each whole image at evaluation, so the features are
probed on the input statistics they were trained on (and the random-init baseline is the same network,
standardization included). ``none`` standardizes nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastssl.base.argtypes import positive_int, probability  # noqa: F401  (flag types of the tile methods)
from fastssl.base.errors import ConfigError
from fastssl.methods.base import Method, smallest_working_size
from fastssl.models import MLPHead
from fastssl.models.inputs import STANDARDIZE_EPS as EPS
from fastssl.models.inputs import StandardizedInput
from fastssl.ops import sample_tiles
from fastssl.ops.sample_tiles import sample_tiles_op

GRID = 3  # 3x3 cells, as in both papers
# The tile methods' default --image-size: the demo's 64 px images upsampled to 128 px, so the default tiles are
# 32 px (3/4 of a 42 px cell). On the 16 px tiles of 64 px images a ResNet's layer3 and layer4 see 1x1 maps (their
# 3x3 convolutions train only the centre tap) and learn what a 16 px tile shows; on whole images those taps and
# the pooled output fell below random init (the scale gap, docs/methods/jigsaw.md: demo seed 0, jigsaw, linear
# at pool 32.7 / 36.0 at 64 px against 45.2 / 39.5 at 128 px). 4x the cost per tile; the papers' cure (64 px
# tiles of 225 px crops) at the demo's CPU budget.
TILE_IMAGE_SIZE = 128
TILE_NORMS = ("input", "tiles", "none")


def tile_norm(cfg: dict) -> str:
    """Where the per-tile standardization happens (module doc): ``--tile-norm``, ``none`` with
    ``--no-tile-norm``; a run saved before ``--tile-norm`` existed has no key and meant ``tiles``."""
    if cfg.get("no_tile_norm"):
        return "none"
    return cfg.get("tile_norm") or "tiles"


def tile_size(cfg: dict) -> int:
    """``--tile``, or 3/4 of a cell (Noroozi & Favaro: 64 px tiles in 85 px cells): 32 px at 128 px, 16 px at 64.
    A config without a ``tile`` key (a preset that leaves it out) gets the default."""
    return cfg.get("tile") or max(1, round(0.75 * (cfg["image_size"] // GRID)))


def add_tile_args(group, gray_p: float, drop_p: float) -> None:
    group.add_argument("--tile", type=positive_int, default=None,
                       help="tile side in px; when not set, 3/4 of a grid cell (of --image-size / 3): 32 px at the "
                       "demo's 128 px")
    group.add_argument("--gray-p", type=probability, default=gray_p, help="per-sample grayscale probability")
    group.add_argument("--drop-p", type=probability, default=drop_p,
                       help="per-sample colour dropping probability (keep one random channel)")
    norm = group.add_mutually_exclusive_group()  # both given: argparse's one-line error, not a silent winner
    norm.add_argument("--tile-norm", choices=TILE_NORMS, default="input",
                      help="per-tile mean/std standardization (a shortcut guard): 'input' as the backbone's first "
                      "step, so whole images are standardized the same way at evaluation; 'tiles' in the tile "
                      "sampler only (before fastssl's fix: evaluation then sees unstandardized images); 'none'")
    norm.add_argument("--no-tile-norm", action="store_true", help="the same as --tile-norm none")
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
        self.tile_norm = tile_norm(cfg)
        if self.tile_norm == "input":
            self.backbone = StandardizedInput(self.backbone)
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
        return sample_tiles(x, self.recipe, tile=self.tile, grid=GRID, normalize=self.tile_norm == "tiles", eps=EPS,
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
