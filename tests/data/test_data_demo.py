"""The demo dataset: deterministic, atomic/regenerated, ImageNet layout, class != colour."""

import json

import numpy as np
import pytest
from PIL import Image

from fastssl.data import DEMO_CLASSES, ImageFolderSource, demo_root, generate_demo, make_loader
from fastssl.data.demo import render


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.JPEG"))}


def test_generator_is_deterministic(tmp_path):
    a = _tree(generate_demo(tmp_path / "a", seed=3, n_train=36, n_val=12, progress=False))
    b = _tree(generate_demo(tmp_path / "b", seed=3, n_train=36, n_val=12, progress=False))
    c = _tree(generate_demo(tmp_path / "c", seed=4, n_train=36, n_val=12, progress=False))
    assert len(a) == 48 and a == b
    assert a.keys() == c.keys() and a != c


def test_demo_root_layout_atomic_and_regenerated(fastssl_cache, capsys):
    cache, _ = fastssl_cache
    kw = dict(n_train=48, n_val=24, size=64)
    root = demo_root(seed=0, **kw)
    assert root.parent == cache / "demo"
    assert "generating" in capsys.readouterr().err  # progress is printed
    assert not [p for p in root.parent.iterdir() if ".tmp-" in p.name]  # temp dir renamed away
    meta = json.loads((root / "COMPLETE.json").read_text())
    assert meta["n_train"] == 48
    train, val = ImageFolderSource(root, "train"), ImageFolderSource(root, "val")
    assert len(DEMO_CLASSES) >= 10 and len(train.classes) == len(DEMO_CLASSES) == len(val.classes)
    assert len(train) == 48 and len(val) == 24
    assert np.bincount(train.labels).tolist() == [4] * 12  # balanced
    img = Image.open(train.files[0])
    assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
    before = _tree(root)
    assert demo_root(seed=0, **kw) == root and "generating" not in capsys.readouterr().err  # cached
    # an interrupted generation (no completion marker) is deleted and regenerated
    (root / "COMPLETE.json").unlink()
    next(iter((root / "train").iterdir())).joinpath("000000.JPEG").unlink(missing_ok=True)
    assert demo_root(seed=0, **kw) == root
    assert "regenerating" in capsys.readouterr().err and _tree(root) == before
    # flows through the same DALI reader
    views, labels = next(iter(make_loader(train, "simclr", batch_size=8, image_size=32)))
    assert views[0].shape == (8, 3, 32, 32)


def test_colour_does_not_identify_the_class():
    """Nearest-centroid on mean colour (+ brightness spread) must stay near chance (1/12)."""
    k, per = len(DEMO_CLASSES), 40
    feats, labels = [], []
    for i in range(k * per):
        img = render(i % k, np.random.default_rng([9, i]), 64).astype(np.float64)
        feats.append(np.concatenate([img.mean((0, 1)), img.std((0, 1))]))
        labels.append(i % k)
    x, y = np.array(feats), np.array(labels)
    half = (np.arange(len(y)) // k) % 2
    tr, te = half == 0, half == 1
    cents = np.stack([x[tr & (y == c)].mean(0) for c in range(k)])
    pred = np.argmin(((x[te][:, None] - cents[None]) ** 2).sum(-1), 1)
    acc = (pred == y[te]).mean()
    print(f"mean-colour nearest-centroid accuracy {acc:.3f}")
    assert acc < 3.0 / k, f"colour statistics predict the class too well: {acc:.2f}"


@pytest.mark.parametrize("cls", range(len(DEMO_CLASSES)))
def test_every_class_draws_a_visible_shape(cls):
    img = render(cls, np.random.default_rng([1, cls]), 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 10
