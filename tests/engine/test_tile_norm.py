"""The cause of jigsaw's / context's feature destruction (docs/methods/jigsaw.md, "Why jigsaw's features were worse than
random init"): training tiles were standardized per tile, whole evaluation images were not. These tests fail on that
behaviour (``--tile-norm tiles``) and pass with the fix (``--tile-norm input``, the default): what the network's
first layer receives has the same statistics for a training tile and for an evaluation image, and training itself is
unchanged."""

import pytest
import torch

from fastssl.cli import train as train_cli
from fastssl.methods import build_method
from fastssl.methods._tiles import StandardizedInput, tile_norm
from fastssl.ops import sample_tiles


def _cfg(method, *extra):
    return train_cli.parse_config(["--method", method, "--image-size", "32", "--width", "8", "--head-hidden", "32",
                                   *(["--permutations", "10"] if method == "jigsaw" else []), *extra])


def _first_conv_input(method, x: torch.Tensor) -> torch.Tensor:
    """What conv1 of the method's backbone receives for whole images ``x`` (eval mode, as the probes)."""
    conv1 = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    got = []
    h = conv1.register_forward_hook(lambda mod, inp, out: got.append(inp[0].detach()))
    method.eval()
    with torch.no_grad():
        method.backbone(x)
    h.remove()
    return got[0]


def _images(B=5, size=32, seed=0):
    """Whole images as the eval recipe gives them: ImageNet-normalized, with each image's own brightness and
    contrast per channel (far from per-image mean 0 / std 1)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(B, 3, size, size, generator=g)
    gain = 0.2 + 1.5 * torch.rand(B, 3, 1, 1, generator=g)
    offset = torch.rand(B, 3, 1, 1, generator=g) - 0.5
    return ((base * gain + offset) - 0.45) / 0.225


@pytest.mark.parametrize("method", ["jigsaw", "context"])
def test_evaluation_images_reach_the_network_standardized_like_training_tiles(method):
    m = build_method(method, _cfg(method))
    x = _images()
    inp = _first_conv_input(m, x)
    mean, std = inp.mean((2, 3)), inp.std((2, 3), unbiased=False)
    # Training tiles are standardized per channel (mean 0, std 1): so must whole images be at evaluation.
    assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3, (mean, std)
    # The old placement ('tiles': only the sampler standardized) fed evaluation images unstandardized.
    old = build_method(method, _cfg(method, "--tile-norm", "tiles"))
    raw = _first_conv_input(old, x)
    assert torch.equal(raw, x) and (raw.std((2, 3)) - 1).abs().max() > 0.5


@pytest.mark.parametrize("method,extra", [("jigsaw", ["--gray-p", "0.5"]), ("context", ["--drop-p", "0.5"])])
def test_training_tiles_are_unchanged_by_moving_the_standardization(method, extra):
    """What the backbone's convolutions see for a training tile is what they saw with the sampler's
    normalize=True, grayscale and colour dropping included (a dropped channel stays 0)."""
    m = build_method(method, _cfg(method, *extra))
    x = _images(B=8, seed=1)
    r = m.sample(x, generator=torch.Generator().manual_seed(3))
    kw = {"perms": m.perms} if method == "jigsaw" else {}
    ref = sample_tiles(x, method, tile=m.tile, normalize=True, draws=r.draws, **kw).tiles
    assert isinstance(m.backbone, StandardizedInput)
    got = m.backbone.standardize(r.tiles.flatten(0, 1)).view_as(ref)
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    if method == "context":
        dropped = r.draws[:, 2] >= 0
        assert dropped.any()
        for b in torch.nonzero(dropped).flatten().tolist():
            off = [c for c in range(3) if c != int(r.draws[b, 2])]
            assert got[b][:, off].abs().max() == 0


def test_whole_image_features_ignore_each_image_brightness_and_contrast():
    """With the standardization in the backbone a per-image, per-channel gain and offset (what per-tile
    normalization removes from every training tile) does not change the features (up to rounding)."""
    m = build_method("jigsaw", _cfg("jigsaw")).eval()
    x = _images(B=4, seed=2)
    g = torch.Generator().manual_seed(5)
    y = x * (0.3 + 2 * torch.rand(4, 3, 1, 1, generator=g)) + torch.randn(4, 3, 1, 1, generator=g)
    with torch.no_grad():
        fx, fy = m.backbone(x), m.backbone(y)
    assert (fx - fy).abs().max() <= 1e-3 * fx.abs().max()


def test_tile_norm_of_old_and_new_configs():
    assert _cfg("jigsaw")["tile_norm"] == "input" and tile_norm(_cfg("jigsaw")) == "input"
    assert tile_norm(_cfg("context", "--no-tile-norm")) == "none"
    assert tile_norm(_cfg("context", "--tile-norm", "tiles")) == "tiles"
    # A checkpoint written before --tile-norm existed rebuilds the network it was trained as.
    old = {k: v for k, v in _cfg("jigsaw").items() if k != "tile_norm"}
    assert tile_norm(old) == "tiles" and not isinstance(build_method("jigsaw", old).backbone, StandardizedInput)
    assert not isinstance(build_method("jigsaw", _cfg("jigsaw", "--no-tile-norm")).backbone, StandardizedInput)
