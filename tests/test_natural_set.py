"""benches/natural.py's crop sides (the natural set and its object-scale variant of docs/methods/jigsaw.md),
on a synthetic photograph: no scikit-image needed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))

import natural  # noqa: E402


def _photo(h=300, w=400):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_default_sides_keep_the_sets_folder_name():
    assert natural.variant_name(0, 400, 100, 64) == "photos8-v1-s0-400-100-64"
    assert natural.variant_name(0, 400, 100, 128, 96, 256) == "photos8-v1-s0-400-100-128-c96-256"


@pytest.mark.parametrize("sides", [(64, 128), (96, 256)])
def test_crop_side_stays_within_the_sides(sides, monkeypatch):
    drawn = []  # the shape of every square cut, before it is resized

    class SpyImage:  # stands in for PIL.Image inside benches/natural.py
        BOX = PIL.Image.BOX

        @staticmethod
        def fromarray(a):
            drawn.append(a.shape[:2])
            return PIL.Image.fromarray(a)

    monkeypatch.setattr(natural, "Image", SpyImage)
    photo, region = _photo(), (0, 0, 300, 290)
    for i in range(40):
        out = natural.crop(photo, region, np.random.default_rng(i), 32, *sides)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    top = min(sides[1], 290)
    assert all(h == w for h, w in drawn)
    sides_cut = [h for h, _ in drawn]
    assert len(sides_cut) == 40 and min(sides_cut) >= sides[0] and max(sides_cut) <= top
    assert max(sides_cut) > sides[0] + (top - sides[0]) // 2  # the upper half of the range is reached


def test_a_region_narrower_than_the_smallest_side_is_an_error():
    with pytest.raises(ValueError, match="smaller than a 200 px crop"):
        natural.crop(_photo(), (0, 0, 300, 150), np.random.default_rng(0), 32, 200, 256)


@pytest.mark.parametrize("sides", [(0, 128), (130, 128)])
def test_bad_sides_are_refused_before_anything_is_written(sides, tmp_path):
    with pytest.raises(ValueError, match="min_side <= max_side"):
        natural.natural_root(0, min_side=sides[0], max_side=sides[1], cache=tmp_path)
    assert list(tmp_path.iterdir()) == []
