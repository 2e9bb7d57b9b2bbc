"""benches/natural.py's crop sides (the natural set and its object-scale variant of docs/methods/jigsaw.md),
on a synthetic photograph: no scikit-image needed."""

from __future__ import annotations

import subprocess
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


def test_generate_passes_the_sides_to_every_crop(tmp_path, monkeypatch):
    photos = {"a": _photo(300, 400), "b": _photo(400, 300)}
    seen = []
    real = natural.crop

    def spy(photo, region, rng, size, min_side, max_side):
        seen.append((min_side, max_side))
        return real(photo, region, rng, size, min_side, max_side)

    monkeypatch.setattr(natural, "crop", spy)
    natural.generate_natural(tmp_path / "set", n_train=3, n_val=2, size=24, min_side=70, max_side=90,
                             photos=photos)
    assert seen == [(70, 90)] * 10
    files = sorted(p.relative_to(tmp_path / "set").parts[:2] for p in (tmp_path / "set").rglob("*.JPEG"))
    assert files == [("train", "00_a")] * 3 + [("train", "01_b")] * 3 + [("val", "00_a")] * 2 + [("val", "01_b")] * 2
    assert all(PIL.Image.open(p).size == (24, 24) for p in (tmp_path / "set").rglob("*.JPEG"))


def test_a_min_side_wider_than_a_region_names_the_photo_and_what_fits(tmp_path):
    # narrow (300 x 200): cut along its height at 225, val rows 229..300 (GAP 8): a strip 71 px across
    photos = {"wide": _photo(300, 400), "narrow": _photo(300, 200)}
    with pytest.raises(ValueError, match=r"val region of narrow \(71 px across\): at most 71"):
        natural.generate_natural(tmp_path / "set", n_train=1, n_val=1, size=8, min_side=72, max_side=90,
                                 photos=photos)
    assert not (tmp_path / "set").exists()  # refused before any patch is written
    natural.generate_natural(tmp_path / "ok", n_train=1, n_val=1, size=8, min_side=71, max_side=90, photos=photos)


@pytest.mark.parametrize("flags,needle", [(["--seed", "-1"], "--seed"), (["--n-val", "0"], "--n-val"),
                                          (["--size", "x"], "--size"), (["--min-side", "0"], "--min-side")])
def test_cli_bad_flag_is_one_line_naming_it(flags, needle):
    script = Path(__file__).resolve().parents[1] / "benches" / "natural.py"
    r = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("natural.py: error: argument " + needle), r.stderr
