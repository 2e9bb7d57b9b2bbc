"""A natural-image set of our own making: patches of the colour photographs that scikit-image ships.

``natural_root()`` returns ``<cache_dir()>/natural/photos8-v1-s<seed>-<n_train>-<n_val>-<size>[-c<min>-<max>]/``
(``cache_dir()``: ``$FASTSSL_CACHE`` or ``~/.cache/fastssl``; the ``-c`` suffix only for crop sides other than
the set's own ``MIN_SIDE``-``MAX_SIDE``) holding
``train/<kk_photo>/<id>.JPEG`` and ``val/<kk_photo>/<id>.JPEG`` (ImageNet layout), generated on first use
(atomically, under a file lock: fastssl.data.cached_folder). Nothing is downloaded: the photographs are the
PNG/JPEG files inside the scikit-image wheel (``skimage/data/``), read straight from the installed package
with PIL (no ``skimage.data`` call, so no pooch fetch can happen). Install with ``pip install -e ".[bench]"``.

Classes: the 8 colour photographs of the wheel (astronaut, chelsea, coffee, hubble_deep_field, ihc,
motorcycle_left, retina, rocket; motorcycle_right, the stereo partner of motorcycle_left, is left out).
A sample is a square crop of side uniform in [``MIN_SIDE``, ``MAX_SIDE``] px, the top capped by its region's
narrower side (absolute pixels, so every photo is seen at about the same resolution: a 64-128 px crop is
downsampled 1-2x, never upsampled much; the val regions are narrow, so chelsea's val crops are 64-109 px and
astronaut's and ihc's 64-124) resized to
``size`` px with a box filter, saved as JPEG quality 90 (the demo's). Crops whose luma standard deviation is
below ``MIN_STD`` (flat black sky or a fundus photo's black corners) are redrawn: every patch has content.

No leakage between the splits: each photo is cut along its longer side into a train region (the first
75%) and a val region (the last 25%), with a ``GAP`` px strip between them that neither uses, and every crop
lies inside its own region: no val pixel is in any train image. The task is therefore "which photograph
does this unseen part come from": colour, texture and object parts, not memorised pixels.

Command line: ``python benches/natural.py`` builds it (a few seconds) and prints the root, for
``python -m fastssl.train --data "$(python benches/natural.py)"``. ``--min-side A --max-side B`` (source px)
builds a variant with other crop sides, e.g. the object-scale set of docs/methods/jigsaw.md (``--size 128
--min-side 96 --max-side 256``; its val crops are capped at 109-156 px for five of the eight photos, see above).
A ``--min-side`` wider than some photo's narrower region is refused before any patch is written (nothing is
left behind), naming the photo and the largest side that fits.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fastssl, not an installed one

from fastssl.base.argtypes import ranged
from fastssl.base.cache import cache_dir
from fastssl.data.cached_folder import cached_folder

VERSION = "v1"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png",
          "retina.jpg", "rocket.jpg")
MIN_SIDE, MAX_SIDE = 64, 128  # crop side in source pixels
MIN_STD = 6.0  # luma std (0..255) below which a crop is redrawn
GAP = 8  # px between the train and the val region of a photo
VAL_FRACTION = 0.25
QUALITY = 90


def photo_dir() -> Path:
    """The ``skimage/data`` folder of the installed scikit-image (found without importing it)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("benches/natural.py needs scikit-image (its wheel ships the photographs): "
                                  "pip install -e '.[bench]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photos() -> dict[str, np.ndarray]:
    """{class name: uint8 HxWx3} of the colour photographs."""
    d = photo_dir()
    return {name.split(".")[0]: np.asarray(Image.open(d / name).convert("RGB")) for name in PHOTOS}


def regions(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """{split: (y0, x0, y1, x1)}: the train region (first 75% of the longer side) and the val region (last
    25%), GAP px apart."""
    if w >= h:
        cut = round(w * (1 - VAL_FRACTION))
        return {"train": (0, 0, h, cut - GAP // 2), "val": (0, cut + GAP // 2, h, w)}
    cut = round(h * (1 - VAL_FRACTION))
    return {"train": (0, 0, cut - GAP // 2, w), "val": (cut + GAP // 2, 0, h, w)}


def crop(photo: np.ndarray, region: tuple[int, int, int, int], rng: np.random.Generator, size: int,
         min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> np.ndarray:
    """One ``size`` px patch (uint8 HxWx3) of a random square of side in [min_side, max_side] (clipped to the
    region) inside ``region`` with some content. ValueError if the region is narrower than ``min_side``."""
    y0, x0, y1, x1 = region
    top = min(max_side, y1 - y0, x1 - x0)
    if top < min_side:
        raise ValueError(f"region {region} is smaller than a {min_side} px crop")
    for _ in range(100):
        s = int(rng.integers(min_side, top + 1))
        y, x = int(rng.integers(y0, y1 - s + 1)), int(rng.integers(x0, x1 - s + 1))
        patch = photo[y:y + s, x:x + s]
        luma = patch @ np.array([0.299, 0.587, 0.114])
        if luma.std() >= MIN_STD:
            break
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.BOX))


def check_min_side(photos: dict[str, np.ndarray], min_side: int) -> None:
    """ValueError naming the photo and split whose region is narrower than ``min_side`` px, with the largest
    ``min_side`` that every region fits."""
    widths = {(name, split): min(y1 - y0, x1 - x0) for name, photo in photos.items()
              for split, (y0, x0, y1, x1) in regions(*photo.shape[:2]).items()}
    (name, split), narrowest = min(widths.items(), key=lambda kv: kv[1])
    if min_side > narrowest:
        raise ValueError(f"--min-side {min_side} does not fit the {split} region of {name} ({narrowest} px "
                         f"across): at most {narrowest} with these photographs")


def generate_natural(out: str | os.PathLike, seed: int = 0, n_train: int = 400, n_val: int = 100,
                     size: int = 64, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE,
                     photos: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``n_train`` train and ``n_val`` val patches per photograph into ``out`` (see module doc);
    ``photos`` (default: ``load_photos()``) maps class names to uint8 HxWx3 arrays."""
    out = Path(out)
    photos = load_photos() if photos is None else photos
    check_min_side(photos, min_side)
    for k, (name, photo) in enumerate(photos.items()):
        reg = regions(*photo.shape[:2])
        for split_id, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            folder = out / split / f"{k:02d}_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([int(seed), k, split_id, i])
                patch = crop(photo, reg[split], rng, size, min_side, max_side)
                Image.fromarray(patch).save(folder / f"{i:06d}.JPEG", quality=QUALITY)
    return out


def variant_name(seed: int, n_train: int, n_val: int, size: int, min_side: int = MIN_SIDE,
                 max_side: int = MAX_SIDE) -> str:
    """The folder name of one set; the set's own crop sides keep the name they always had."""
    name = f"photos{len(PHOTOS)}-{VERSION}-s{seed}-{n_train}-{n_val}-{size}"
    return name if (min_side, max_side) == (MIN_SIDE, MAX_SIDE) else f"{name}-c{min_side}-{max_side}"


def natural_root(seed: int = 0, *, n_train: int = 400, n_val: int = 100, size: int = 64,
                 min_side: int = MIN_SIDE, max_side: int = MAX_SIDE,
                 cache: str | os.PathLike | None = None) -> Path:
    """The set's root (train/ and val/), generated on first use under ``cache`` (default:
    ``cache_dir() / "natural"``, i.e. ``$FASTSSL_CACHE/natural`` or ``~/.cache/fastssl/natural``).
    Other crop sides than the set's own (``MIN_SIDE``-``MAX_SIDE``) make a variant folder, ``-c<min>-<max>``
    appended to the name (the tile-task diagnosis of docs/methods/jigsaw.md uses 96-256)."""
    if not 1 <= min_side <= max_side:
        raise ValueError(f"crop sides must satisfy 1 <= min_side <= max_side, got {min_side}, {max_side}")
    if seed < 0 or min(n_train, n_val, size) < 1:
        raise ValueError(f"need seed >= 0, n_train, n_val and size >= 1; got {seed}, {n_train}, {n_val}, {size}")
    base = Path(cache) if cache is not None else cache_dir() / "natural"
    final = base / variant_name(seed, n_train, n_val, size, min_side, max_side)

    def fill(tmp: Path) -> dict:
        t0 = time.perf_counter()
        generate_natural(tmp, seed=seed, n_train=n_train, n_val=n_val, size=size, min_side=min_side,
                         max_side=max_side)
        return dict(version=VERSION, seed=seed, n_train=n_train, n_val=n_val, size=size, photos=PHOTOS,
                    min_side=min_side, max_side=max_side, gap=GAP, val_fraction=VAL_FRACTION,
                    seconds=round(time.perf_counter() - t0, 2))

    return cached_folder(final, fill)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=ranged(int, 0), default=0, help="seed of the crops' positions and sides")
    p.add_argument("--n-train", type=ranged(int, 1), default=400, help="train patches per photograph")
    p.add_argument("--n-val", type=ranged(int, 1), default=100, help="val patches per photograph")
    p.add_argument("--size", type=ranged(int, 1), default=64, help="stored side of every patch, px")
    p.add_argument("--min-side", type=ranged(int, 1), default=MIN_SIDE, help="smallest crop side in source px")
    p.add_argument("--max-side", type=ranged(int, 1), default=MAX_SIDE,
                   help="largest crop side in source px (capped by each region's narrower side)")
    a = p.parse_args()
    try:
        root = natural_root(a.seed, n_train=a.n_train, n_val=a.n_val, size=a.size, min_side=a.min_side,
                            max_side=a.max_side)
    except (ValueError, ModuleNotFoundError) as e:
        p.error(str(e))
    print(root, file=sys.stdout)
