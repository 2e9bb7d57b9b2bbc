"""The tile / rotation pretext methods (jigsaw, context, rotation): forward, pictures, flags, tiny runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastssl.cli import train as train_cli
from fastssl.evaluation.taps import trunk
from fastssl.methods import build_method
from fastssl.methods.rotation import rotate_all
from fastssl.ops.sample_tiles import neighbour_cell

TILE_METHODS = ["jigsaw", "context", "rotation"]


def _cfg(method, *extra):
    return train_cli.parse_config(["--method", method, "--image-size", "32", "--width", "8", "--head-hidden", "32",
                                   *(["--permutations", "10"] if method == "jigsaw" else []), *extra])


def _views(B=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, size, size, generator=g)], torch.zeros(B, dtype=torch.long)


@pytest.mark.parametrize("method", TILE_METHODS)
def test_forward_backward_and_whole_image_backbone(method):
    m = build_method(method, _cfg(method))
    views, labels = _views()
    loss, metrics = m(views, labels)
    n_classes = {"jigsaw": 10, "context": 8, "rotation": 4}[method]
    # Cross-entropy of an untrained classifier: near log(classes), certainly finite and positive.
    assert torch.isfinite(loss) and 0.2 * torch.log(torch.tensor(n_classes)) < loss < 5 * n_classes
    assert 0 <= float(metrics["acc"]) <= 1
    loss.backward()
    grads = [p.grad for p in m.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # kNN / linear probes feed whole images to the backbone.
    m.eval()
    with torch.no_grad():
        f = m.backbone(views[0])
    assert f.shape == (6, m.backbone.feature_dim) and torch.isfinite(f).all()


def test_jigsaw_and_context_tile_geometry():
    m = build_method("jigsaw", _cfg("jigsaw"))
    assert m.tile == 8 and m.perms.shape == (10, 9)  # 3/4 of a 10 px cell at 32 px
    assert build_method("jigsaw", _cfg("jigsaw", "--tile", "10")).tile == 10
    assert [neighbour_cell(k) for k in range(8)] == [0, 1, 2, 3, 5, 6, 7, 8]


@pytest.mark.parametrize("method", ["jigsaw", "context"])
def test_default_tiles_give_layer3_a_spatial_map(method):
    """Issue 23's scale gap (docs/methods/jigsaw.md): on the old 64 px default's 16 px tiles the ResNet's layer3
    and layer4 saw 1x1 maps, so their 3x3 convolutions trained only the centre tap and the deep taps fell below
    random init on whole images. The default must give training tiles on which layer3 is at least 2x2."""
    cfg = train_cli.parse_config(["--method", method])
    m = build_method(method, cfg)
    assert cfg["image_size"] == 128 and m.tile == 32
    seen = {}
    trunk(m.backbone).layer3.register_forward_hook(lambda mod, inp, out: seen.update(shape=out.shape))
    with torch.no_grad():
        m.backbone.eval()(torch.zeros(1, 3, m.tile, m.tile))
    assert tuple(seen["shape"][2:]) == (2, 2), seen["shape"]


def test_rotate_all_is_four_quarter_turns():
    x = torch.randn(3, 2, 5, 5)
    r, y = rotate_all(x)
    assert r.shape == (12, 2, 5, 5) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for k in range(4):
        assert torch.equal(torch.rot90(r[3 * k:3 * k + 3], -k, dims=(2, 3)), x)
    assert torch.equal(r[3:6, :, 0, :], x[:, :, :, -1])  # counter-clockwise: the top row was the right column


@pytest.mark.parametrize("method", TILE_METHODS)
def test_visualize_writes_a_png(method, tmp_path):
    from PIL import Image

    m = build_method(method, _cfg(method)).eval()
    views, labels = _views(B=8)
    with torch.no_grad():
        m.visualize(views, labels, tmp_path / "viz" / "epoch_000.png", 0)
    img = Image.open(tmp_path / "viz" / "epoch_000.png")
    assert img.width > 4 * 32 and img.height > 6 * 32  # 6 rows of >= 4 pictures of >= 32 px


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "jigsaw", "--permutations", "1"], "argument --permutations: must be in [2, 1000]"),
        (["--method", "jigsaw", "--permutations", "5000"], "argument --permutations: must be in [2, 1000]"),
        (["--method", "context", "--tile", "50"], "--tile 50 does not fit a grid cell of 42 px"),
        (["--method", "jigsaw", "--gray-p", "1.5"], "argument --gray-p: must be in [0, 1]"),
        (["--method", "context", "--drop-p", "-0.1"], "argument --drop-p: must be in [0, 1]"),
        (["--method", "rotation", "--head-hidden", "0"], "argument --head-hidden: must be >= 1"),
    ],
)
def test_bad_flags_are_one_line_errors(extra, message, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fastssl.train", *extra, "--out", str(out)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "fastssl.train: error: " in last and message in last, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("method", TILE_METHODS)
def test_tiny_run_through_the_cli(method, tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["--method", method, "--data", str(tiny_data), "--width", "8", "--image-size", "32", "--batch-size", "16",
            "--epochs", "1", "--workers", "1", "--head-hidden", "32", "--quiet", "--out", str(out)]
    if method == "jigsaw":
        args += ["--permutations", "10"]
    r = subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x and "step" in x]
    assert [x["step"] for x in steps] == list(range(1, 7))  # 96 images / 16
    assert all(torch.isfinite(torch.tensor(x["loss"])) and 0 <= x["acc"] <= 1 for x in steps)
    assert (out / "viz" / "epoch_000.png").is_file() and (out / "viz" / "epoch_001.png").is_file()
    ev = json.loads((out / "eval.json").read_text())
    assert {"learned", "random_init"} <= set(ev) and 0 <= ev["learned"]["top1"] <= 100
    assert "random init" in r.stdout
