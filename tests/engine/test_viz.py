"""fastssl.viz: the PNG grids every method's visualize hook writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.constants import IMAGENET_MEAN, IMAGENET_STD
from fastssl.viz import denormalize, save_grid


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
