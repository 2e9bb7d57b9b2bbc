"""The built-in demo dataset: procedurally drawn shapes, written as real JPEGs in ImageNet layout.

``demo_root(seed=0)`` returns ``<cache_dir()>/demo/shapes12-v1-s<seed>-<n_train>-<n_val>-<size>/`` holding
``train/<class>/<id>.JPEG`` and ``val/<class>/<id>.JPEG``, generating it on first use: written into a
temporary folder next to it, marked complete, then renamed into place (atomic), under a file lock so
concurrent DDP ranks generate it once (fastssl.data.cached_folder). A folder without the completion
marker (an interrupted run) is deleted and regenerated.

Classes (12, class = shape family, never colour): circle, square, triangle, star, plus, ring, crescent,
arrow, frame (hollow square), bars (two parallel bars), stripes, checker. Each image draws its
foreground and background colours independently and uniformly (with a minimum contrast), a random
background gradient, position, scale, rotation and pixel noise, so colour, brightness and position
carry no class information. Like photographs, the images have an "up": shapes are drawn upright (their
canonical pose, rotated at most ``TILT`` = 25 degrees either way; stripes and checkers run within 25
degrees of vertical) and the background is lit from above (the gradient brightens within 45 degrees
of straight up), so orientation-based pretext tasks (rotation) have a signal to learn, as they do on
ImageNet (v1 rotated shapes and light uniformly, which made rotation prediction unlearnable). A
representation must encode shape to separate the classes, and SimCLR's crop + colour jitter make every
nuisance cue differ between the two views of an image. The images are
64x64 by default (``size``), deterministic from ``seed`` (each image has its own
``numpy.random.default_rng([seed, split, index])``) and JPEG quality 90.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fastssl.base.cache import cache_dir

from .cached_folder import cached_folder

VERSION = "v2"  # v2: upright shapes and light from above (v1 rotated both uniformly)
CLASSES = ("circle", "square", "triangle", "star", "plus", "ring", "crescent", "arrow", "frame", "bars",
           "stripes", "checker")
_SS = 2  # supersampling factor for anti-aliased edges
TILT = math.radians(25)  # the largest rotation of a shape away from its upright pose
LIGHT = math.radians(45)  # the largest angle of the light (gradient) direction away from straight up


def _poly(draw, pts, cx, cy, r, th, fill=255):
    """Draw a polygon given in unit local coordinates, scaled by r, rotated by th, at (cx, cy)."""
    c, s = math.cos(th), math.sin(th)
    draw.polygon([(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts], fill=fill)


def _regular(n, phase=0.0, radius=1.0):
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _rect(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _shape_mask(cls: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A float mask in [0, 1] (size x size) of one instance of ``cls``."""
    n = size * _SS
    img = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(img)
    if cls in ("stripes", "checker"):
        period = rng.uniform(0.1, 0.22) * n
        th = rng.uniform(-TILT, TILT)
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        u = (xx * math.cos(th) + yy * math.sin(th)) / period + rng.uniform(0, 1)
        m = (u % 1.0) < 0.5
        if cls == "checker":
            v = (-xx * math.sin(th) + yy * math.cos(th)) / period + rng.uniform(0, 1)
            m = m ^ ((v % 1.0) < 0.5)
        img = Image.fromarray(m.astype(np.uint8) * 255)
    else:
        r = rng.uniform(0.22, 0.4) * n
        margin = 0.75 * r
        cx, cy = rng.uniform(margin, n - margin, size=2)
        # Upright pose: triangle / star / arrow tips point up, the crescent opens upwards.
        th = rng.uniform(-TILT, TILT) - math.pi / 2
        if cls == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        elif cls == "square":
            _poly(d, _regular(4, math.pi / 4), cx, cy, r, th)
        elif cls == "triangle":
            _poly(d, _regular(3), cx, cy, r * 1.15, th)
        elif cls == "star":
            pts = [(p if k % 2 == 0 else (0.42 * p[0], 0.42 * p[1])) for k, p in enumerate(_regular(10))]
            _poly(d, pts, cx, cy, r * 1.15, th)
        elif cls == "plus":
            w = 0.3
            _poly(d, _rect(-1, -w, 1, w), cx, cy, r, th)
            _poly(d, _rect(-w, -1, w, 1), cx, cy, r, th)
        elif cls == "ring":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            q = r * 0.55
            d.ellipse([cx - q, cy - q, cx + q, cy + q], fill=0)
        elif cls == "crescent":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
            ox, oy = cx + 0.55 * r * math.cos(th), cy + 0.55 * r * math.sin(th)
            q = r * 0.9
            d.ellipse([ox - q, oy - q, ox + q, oy + q], fill=0)
        elif cls == "arrow":
            _poly(d, [(-1, -0.2), (0.2, -0.2), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.2), (-1, 0.2)],
                  cx, cy, r, th)
        elif cls == "frame":
            _poly(d, _regular(4, math.pi / 4), cx, cy, r, th)
            _poly(d, _regular(4, math.pi / 4), cx, cy, r * 0.6, th, fill=0)
        elif cls == "bars":
            _poly(d, _rect(-1, -0.75, 1, -0.25), cx, cy, r, th)
            _poly(d, _rect(-1, 0.25, 1, 0.75), cx, cy, r, th)
        else:  # pragma: no cover
            raise ValueError(cls)
    img = img.resize((size, size), Image.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Independent uniform foreground/background colours at least 80 apart (RGB L2)."""
    while True:
        fg, bg = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(fg - bg) > 80:
            return fg.astype(np.float32), bg.astype(np.float32)


def render(cls_index: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """One uint8 HxWx3 image of class ``CLASSES[cls_index]``."""
    mask = _shape_mask(CLASSES[cls_index], rng, size)[..., None]
    fg, bg = _colours(rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    g = -math.pi / 2 + rng.uniform(-LIGHT, LIGHT)  # image y grows downwards: -pi/2 brightens the top
    grad = (xx * math.cos(g) + yy * math.sin(g))[..., None] * rng.uniform(0, 80, size=3).astype(np.float32)
    img = bg + grad + mask * (fg - bg - grad)  # foreground flat, background with gradient
    img += rng.normal(0, rng.uniform(2, 12), size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def generate_demo(out: str | os.PathLike, seed: int = 0, n_train: int = 6000, n_val: int = 1200,
                  size: int = 64, quality: int = 90, progress: bool = True) -> Path:
    """Write train/ and val/ (ImageNet layout, balanced classes) into ``out``; returns ``out``."""
    out = Path(out)
    total, done, t0 = n_train + n_val, 0, time.perf_counter()
    for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        dirs = [out / split / f"{k:02d}_{name}" for k, name in enumerate(CLASSES)]
        for dr in dirs:
            dr.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            k = i % len(CLASSES)
            rng = np.random.default_rng([int(seed), split_id, i])
            Image.fromarray(render(k, rng, size)).save(dirs[k] / f"{i:06d}.JPEG", quality=quality)
            done += 1
            if progress and (done % 1000 == 0 or done == total):
                print(f"[fastssl.data.demo] {done}/{total} images ({time.perf_counter() - t0:.1f}s) -> {out}",
                      file=sys.stderr, flush=True)
    return out


def demo_root(seed: int = 0, *, n_train: int = 6000, n_val: int = 1200, size: int = 64,
              cache: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The demo dataset's root (with train/ and val/), generated on first use; see the module docstring."""
    base = Path(cache) if cache is not None else cache_dir() / "demo"
    final = base / f"shapes12-{VERSION}-s{seed}-{n_train}-{n_val}-{size}"

    def announce(stale: bool) -> None:
        if not progress:
            return
        if stale:
            print(f"[fastssl.data.demo] incomplete demo dataset at {final}: regenerating", file=sys.stderr)
        print(f"[fastssl.data.demo] generating {n_train}+{n_val} demo images (seed {seed}) into {final}",
              file=sys.stderr, flush=True)

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        generate_demo(tmp, seed=seed, n_train=n_train, n_val=n_val, size=size, progress=progress)
        return dict(version=VERSION, seed=seed, n_train=n_train, n_val=n_val, size=size, classes=CLASSES,
                    seconds=round(time.perf_counter() - t0, 2))

    return cached_folder(final, fill, announce=announce)
