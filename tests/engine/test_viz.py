"""fastssl.base.viz: the PNG grids every method's visualize hook writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.base.constants import IMAGENET_MEAN, IMAGENET_STD
from fastssl.base.viz import denormalize, save_grid


def test_denormalize_inverts_the_pipeline_normalization():
    img = torch.rand(3, 5, 7)
    m = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    s = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(denormalize((img - m) / s), img, rtol=0, atol=1e-6)


def test_save_grid_places_each_image_scaled(tmp_path):
    red = torch.zeros(3, 4, 4)
    red[0] = 1
    gray = torch.full((1, 4, 4), 0.5)
    path = save_grid([[red, gray], [gray]], tmp_path / "sub" / "g.png", scale=2, pad=2)
    arr = np.asarray(Image.open(path))
    assert arr.shape == (2 + 2 * (8 + 2), 2 + 2 * (8 + 2), 3)
    assert (arr[2:10, 2:10] == [255, 0, 0]).all()  # first cell: red, 4 px scaled to 8
    assert (arr[2:10, 12:20] == 128).all()  # 1-channel image shown as gray
    assert (arr[12:20, 12:20] == 255).all()  # missing cell stays white
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_save_grid_refuses_nothing(tmp_path):
    with pytest.raises(ValueError, match="at least one image"):
        save_grid([], tmp_path / "x.png")


def test_save_grid_titles_are_never_clipped_or_overlapping(tmp_path):
    # Long titles over small images (a 16 px tiny run): each column is widened to its title and the left
    # margin to the widest row title, so every title is whole and separated from its neighbours by white.
    img = torch.full((3, 8, 8), 0.5)
    path = save_grid([[img, img, img], [img, img, img]], tmp_path / "t.png", scale=2, pad=2,
                     col_titles=["epoch 0: view 1", "reconstruction+visible", "annealed mean ep10"],
                     row_titles=["wrong cos 0.73", "pred 270 270 270 270"])
    arr = np.asarray(Image.open(path).convert("L"))
    dark = arr < 128
    cols = np.flatnonzero(dark[:12].any(axis=0))  # the column titles' strip
    gaps = np.flatnonzero(np.diff(cols) > 3)  # white runs between words of one title are 1-3 px
    assert cols.size and cols.max() < arr.shape[1] - 1 and cols.min() > 0  # not cut at either edge
    assert len(gaps) >= 2, "the three column titles run into each other"
    cell_gray = (arr == 128)  # the images (0.5 gray) start right of the widest row title
    first_image_x = np.flatnonzero(cell_gray.any(axis=0)).min()
    row_text_x = np.flatnonzero(dark[20:].any(axis=0))
    assert row_text_x.max() < first_image_x, "a row title reaches into the images"
