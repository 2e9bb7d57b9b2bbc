"""Shared parts of the tile pretext methods (jigsaw, context): flags, the tile size, picture helpers."""

from __future__ import annotations

import torch

from fastssl.argtypes import positive_int, probability  # noqa: F401  (flag types of the tile methods)
from fastssl.errors import ConfigError

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


def check_tile_config(cfg: dict) -> None:
    t, cell = tile_size(cfg), cfg["image_size"] // GRID
    if t > cell:
        raise ConfigError(f"--tile {t} does not fit a grid cell of {cell} px (--image-size {cfg['image_size']} "
                          f"in a {GRID}x{GRID} grid); use --tile <= {cell}")


def arrange(tiles: torch.Tensor, cells: list[int], grid: int = GRID, gap: int = 2, fill: float = 1.0) -> torch.Tensor:
    """Place tiles ``(n, C, t, t)`` at grid ``cells`` (row-major) of a ``grid x grid`` canvas with gaps;
    empty cells stay ``fill``. Returns ``(C, side, side)`` for ``fastssl.viz.save_grid``."""
    n, C, t, _ = tiles.shape
    side = grid * t + (grid - 1) * gap
    canvas = torch.full((C, side, side), fill, dtype=tiles.dtype)
    for k, cell in enumerate(cells):
        y, x = divmod(int(cell), grid)
        canvas[:, y * (t + gap):y * (t + gap) + t, x * (t + gap):x * (t + gap) + t] = tiles[k]
    return canvas
