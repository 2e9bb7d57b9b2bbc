"""A generated ImageNet-layout folder of full-size JPEGs, for ``python -m fastssl.train --dry-run N``.

``imagenet_like_root()`` returns ``<cache_dir()>/dryrun/imagenet-like-<VERSION>-<n_images>-<W>x<H>/`` holding
``train/<wnid>/<wnid>_<i>.JPEG``: ``n_images`` (default 320) JPEGs of 500x375 px (ImageNet's most common
size) spread over ``n_classes`` (default 1000) class folders named like wnids (``n00000000`` ...), most of
them empty (sparse, as the dry run allows), so the class count and the decode/augment cost per image are
ImageNet's while the folder stays small (~30 MB). Generated once, with a progress bar, into a temporary
folder next to it that is renamed into place when complete, under a file lock (fastssl.data.cached_folder,
like the demo data); an incomplete folder is regenerated.

Pictures: a smooth random colour field (a coarse random grid upsampled bicubically), a few random ellipses
and rectangles, and pixel noise; JPEG quality 90, so their size and decode cost are those of photographs
(~80-100 KB). They carry no class information: the dry run measures cost, not learning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fastssl.base.cache import cache_dir

from .cached_folder import cached_folder

VERSION = "v1"


def wnid(k: int) -> str:
    """The class folder name of class ``k`` (wnid-like, sorts in class order)."""
    return f"n{k:08d}"


def picture(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """One RGB picture (see the module docstring)."""
    gw, gh = int(rng.integers(3, 9)), int(rng.integers(3, 7))
    grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.uint8)
    img = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(20, width / 2), rng.uniform(20, height / 2)
        box = [x0, y0, x0 + w, y0 + h]
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def generate(out: str | os.PathLike, n_images: int = 320, n_classes: int = 1000, size: tuple[int, int] = (500, 375),
             seed: int = 0, progress: bool = True) -> Path:
    """Write ``train/<wnid>/`` for ``n_classes`` classes and ``n_images`` JPEGs into ``out``; image i goes
    to class ``(i * 7919) % n_classes`` (spread over the folders; 7919 is prime)."""
    from fastssl.base.progress import Progress

    out = Path(out)
    for k in range(n_classes):
        (out / "train" / wnid(k)).mkdir(parents=True, exist_ok=True)
    bar = Progress(n_images, 1, enabled=progress, every_s=5.0)
    for i in range(n_images):
        k = (i * 7919) % n_classes
        rng = np.random.default_rng([int(seed), i])
        picture(rng, *size).save(out / "train" / wnid(k) / f"{wnid(k)}_{i}.JPEG", quality=90)
        bar.update(i + 1, prefix="dry-run data ", force=i + 1 == n_images)
    bar.close()
    return out


def imagenet_like_root(n_images: int = 320, n_classes: int = 1000, size: tuple[int, int] = (500, 375), *,
                       cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The generated folder's root (with ``train/``), generated on first use; see the module docstring."""
    base = Path(cache) if cache is not None else cache_dir() / "dryrun"
    final = base / f"imagenet-like-{VERSION}-{n_images}-{n_classes}-{size[0]}x{size[1]}"

    def announce(stale: bool) -> None:
        if progress:
            print(f"fastssl.train: generating the dry-run data once: {n_images} JPEGs of {size[0]}x{size[1]} in "
                  f"{n_classes} class folders -> {final}", file=sys.stderr, flush=True)

    def fill(tmp: Path) -> dict:
        generate(tmp, n_images, n_classes, size, progress=progress)
        return dict(version=VERSION, n_images=n_images, n_classes=n_classes, size=list(size))

    return cached_folder(final, fill, announce=announce)
