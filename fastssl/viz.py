"""Pictures of what a method sees and predicts: image grids written as PNG (PIL, no plotting stack).

    from fastssl.viz import denormalize, save_grid
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

from fastssl.constants import IMAGENET_MEAN, IMAGENET_STD


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
    with PIL's default font above columns and left of rows. Returns the path written.
    """
    from PIL import Image, ImageDraw

    if not rows or not any(rows):
        raise ValueError("save_grid needs at least one image")
    cells = [[_to_uint8(im) for im in row] for row in rows]
    ch = max(c.shape[0] for row in cells for c in row) * scale
    cw = max(c.shape[1] for row in cells for c in row) * scale
    ncol = max(len(row) for row in cells)
    left = 8 + 7 * max((len(t) for t in row_titles or []), default=0) if row_titles else 0
    top = 14 if col_titles else 0
    canvas = Image.new("RGB", (left + ncol * (cw + pad) + pad, top + len(cells) * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(col_titles or []):
        draw.text((left + pad + j * (cw + pad), 1), str(title), fill="black")
    for i, row in enumerate(cells):
        y = top + pad + i * (ch + pad)
        if row_titles and i < len(row_titles):
            draw.text((2, y + ch // 2 - 5), str(row_titles[i]), fill="black")
        for j, c in enumerate(row):
            im = Image.fromarray(c).resize((c.shape[1] * scale, c.shape[0] * scale), Image.NEAREST)
            x = left + pad + j * (cw + pad)
            canvas.paste(im, (x + (cw - im.width) // 2, y + (ch - im.height) // 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
