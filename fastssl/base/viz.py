"""Pictures of what a method sees and predicts: image grids written as PNG (PIL, no plotting stack).

    from fastssl.base.viz import denormalize, save_grid
    save_grid([[img, masked, recon], ...], path, col_titles=["image", "masked", "reconstruction"])

Images are float tensors (C, H, W) in [0, 1] (use ``denormalize`` on the pipeline's normalized views);
1-channel images are shown as gray. Cells of one grid may differ in size; each is centred in a cell of
the largest size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fastssl.base.atomic import atomic_path
from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo the pipeline's per-channel normalization: (..., 3, H, W) float -> [0, 1], float32 on the CPU."""
    x = x.detach().float().cpu()
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    img = img.detach().float().cpu()
    if img.dim() == 2:
        img = img[None]
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def save_grid(rows: list[list[torch.Tensor]], path: str | os.PathLike, *, row_titles: list[str] | None = None,
              col_titles: list[str] | None = None, scale: int = 2, pad: int = 2) -> Path:
    """Write ``rows`` (a list of rows of (C, H, W) images in [0, 1]) as one PNG, atomically.

    ``scale`` enlarges each image (nearest neighbour) so 64 px views stay legible; titles are drawn
    with PIL's default font, centred above columns and left of rows; a column is widened to its title
    and the left margin to the widest row title, so no title is clipped or overlaps another. Returns
    the path written.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not rows or not any(rows):
        raise ValueError("save_grid needs at least one image")
    cells = [[_to_uint8(im) for im in row] for row in rows]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:  # (width, bottom) of the text drawn at (0, 0)
        x0, _, x1, y1 = measure.textbbox((0, 0), str(text), font=font)
        return x1 - min(x0, 0), y1

    # Every column is at least as wide as its title and the margins hold the widest row title and the
    # tallest column title, so no title is cut at the picture's edge or runs into its neighbour.
    ch = max(c.shape[0] for row in cells for c in row) * scale
    cw = max(c.shape[1] for row in cells for c in row) * scale
    ncol = max(len(row) for row in cells)
    col_sizes = [size(t) for t in col_titles or []]
    cw = max([cw] + [w + 2 * pad for w, _ in col_sizes])
    left = 4 + max((size(t)[0] for t in row_titles), default=0) + 2 * pad if row_titles else 0
    top = max((b for _, b in col_sizes), default=0) + 3 if col_titles else 0
    canvas = Image.new("RGB", (left + ncol * (cw + pad) + pad, top + len(cells) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (title, (w, _)) in enumerate(zip(col_titles or [], col_sizes)):
        draw.text((left + pad + j * (cw + pad) + (cw - w) // 2, 1), str(title), fill="black", font=font)
    for i, row in enumerate(cells):
        y = top + pad + i * (ch + pad)
        if row_titles and i < len(row_titles):
            draw.text((2, y + ch // 2 - 6), str(row_titles[i]), fill="black", font=font)
        for j, c in enumerate(row):
            im = Image.fromarray(c).resize((c.shape[1] * scale, c.shape[0] * scale), Image.NEAREST)
            x = left + pad + j * (cw + pad)
            canvas.paste(im, (x + (cw - im.width) // 2, y + (ch - im.height) // 2))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
