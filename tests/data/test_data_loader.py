"""The DALI loader: exact epochs across shards, recipes' views, determinism, resume, options."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.data import RECIPES, DataError, ImageFolderSource, make_loader

N = 24  # one image per class, so a label identifies its file


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for i in range(N):
        (root / f"c{i:02d}").mkdir()
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"c{i:02d}" / "img.JPEG", quality=90)
    return ImageFolderSource(root)


def _collect(loader):
    return [([v.clone() for v in views], labels.clone()) for views, labels in loader]


@pytest.mark.parametrize("shards", [1, 2])
def test_every_file_exactly_once_per_epoch(src, shards):
    for epoch in range(2):
        seen = []
        for r in range(shards):
            loader = make_loader(src, "eval", batch_size=5, epoch=epoch, seed=3, shard_id=r,
                                 num_shards=shards, image_size=8, drop_last=False)
            batches = _collect(loader)
            assert len(batches) == len(loader) == -(-N // shards // 5)
            seen += [int(x) for _, lab in batches for x in lab]
        assert sorted(seen) == list(range(N))
    # the order differs between epochs, is the same for the same (seed, epoch)
    first = lambda e: _collect(make_loader(src, "eval", 8, epoch=e, seed=3, image_size=8))[0][1]
    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))


def test_len_drop_last_and_labels_match_files(src):
    loader = make_loader(src, "eval", batch_size=5, image_size=8, drop_last=True)
    batches = _collect(loader)
    assert len(loader) == len(batches) == N // 5 and all(len(lab) == 5 for _, lab in batches)
    part = make_loader(src, "eval", batch_size=5, image_size=8, drop_last=False)
    sizes = [len(lab) for _, lab in part]
    assert sizes == [5, 5, 5, 5, 4] and len(part) == 5
    # labels follow the folder names, and the eval view of class k is file k's image
    lab = batches[0][1][0].item()
    assert Path(src.files[src.labels.index(lab)]).parent.name == src.classes[lab]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        make_loader(src, "eval", batch_size=N + 1)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("output", ["float", "uint8"])
def test_view_shapes_dtypes_ranges(src, recipe, output):
    loader = make_loader(src, recipe, batch_size=6, image_size=12, output=output)
    views, labels = next(iter(loader))
    assert len(views) == (2 if recipe == "simclr" else 1) == RECIPES[recipe].n_views
    assert labels.dtype == torch.int64 and labels.shape == (6,)
    for v in views:
        assert v.shape == (6, 3, 12, 12) and v.device.type == "cpu"
        if output == "uint8":
            assert v.dtype == torch.uint8
        else:
            assert v.dtype == torch.float32 and torch.isfinite(v).all()
            lo, hi = -0.485 / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4  # ImageNet-normalized [0, 1]
            assert v.min() >= lo and v.max() <= hi and v.std() > 0.1


def test_simclr_views_differ_and_options(src, tmp_path):
    v, _ = next(iter(make_loader(src, "simclr", batch_size=8, image_size=16, output="uint8")))
    assert not torch.equal(v[0], v[1])
    assert (v[0].float() - v[1].float()).abs().mean() > 5
    # jitter strength is configurable; an all-identity recipe differs from the default one
    plain = dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                 flip_p=0.0)
    square = tmp_path / "square"
    for i in range(4):
        (square / f"c{i}").mkdir(parents=True)
        img = np.random.default_rng(i).integers(0, 255, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(img).save(square / f"c{i}" / "a.jpg")
    sq = ImageFolderSource(square)
    p, _ = next(iter(make_loader(sq, "simclr", 4, image_size=16, output="uint8", recipe_options=plain)))
    assert torch.equal(p[0], p[1])  # no randomness left: both views identical
    strong = make_loader(src, "simclr", 8, image_size=16, recipe_options={"jitter": 0.8, "hue": 0.2})
    assert strong.opts["brightness"] == strong.opts["saturation"] == 0.8 and strong.opts["hue"] == 0.2
    with pytest.raises(ValueError, match="unknown option"):
        make_loader(src, "simclr", 8, recipe_options={"hue_strength": 1})
    with pytest.raises(ValueError, match="unknown recipe"):
        make_loader(src, "byol", 8)


def test_same_seed_same_batches_bitwise(src):
    kw = dict(batch_size=6, epoch=1, seed=7, image_size=16)
    a = _collect(make_loader(src, "simclr", **kw))
    b = _collect(make_loader(src, "simclr", num_threads=1, **kw))  # thread count does not matter
    for (va, la), (vb, lb) in zip(a, b):
        assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb))
    c = _collect(make_loader(src, "simclr", **{**kw, "seed": 8}))
    assert not torch.equal(a[0][0][0], c[0][0][0])
    # other ranks get other augmentation streams
    r0 = _collect(make_loader(src, "simclr", shard_id=0, num_shards=2, **{**kw, "batch_size": 4}))
    r1 = _collect(make_loader(src, "simclr", shard_id=1, num_shards=2, **{**kw, "batch_size": 4}))
    assert not set(r0[0][1].tolist()) & set(r1[0][1].tolist())


def test_skip_batches_resumes_exactly(src):
    kw = dict(batch_size=4, epoch=2, seed=5, image_size=16)
    full = _collect(make_loader(src, "simclr", **kw))
    resumed_loader = make_loader(src, "simclr", skip_batches=2, **kw)
    resumed = _collect(resumed_loader)
    assert len(resumed_loader) == len(full) - 2 == len(resumed)
    for (va, la), (vb, lb) in zip(full[2:], resumed):
        assert torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb))
    with pytest.raises(ValueError, match="skip_batches"):
        make_loader(src, "simclr", skip_batches=len(full) + 1, **kw)


def test_cuda_pipeline(src, device):
    """device='cuda' builds the same pipeline with mixed decode; tensors land on the GPU."""
    loader = make_loader(src, "simclr", batch_size=4, image_size=16, device=device)
    views, labels = next(iter(loader))
    assert len(views) == 2 and all(v.device.type == device.type and v.shape == (4, 3, 16, 16) for v in views)
    assert labels.device.type == device.type and labels.dtype == torch.int64
    again, _ = next(iter(make_loader(src, "simclr", batch_size=4, image_size=16, device=device)))
    assert torch.equal(views[0], again[0])


def test_corrupt_body_fails_loudly_naming_the_file(tmp_path):
    """A JPEG with a valid header and end marker but a garbage body passes the cheap check; verification
    names it at start, and if unverified the loader must stop with a one-line error naming it, not crash
    anonymously or substitute data."""
    for i in range(8):
        (tmp_path / f"c{i}").mkdir()
        img = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"c{i}" / "a.jpg")
    victim = tmp_path / "c5" / "a.jpg"
    good = victim.read_bytes()
    victim.write_bytes(good[:3] + bytes(len(good) - 5) + b"\xff\xd9")
    with pytest.raises(DataError, match=str(victim)):  # the start-up verification decodes it fully
        ImageFolderSource(tmp_path)
    src = ImageFolderSource(tmp_path, verify="off")  # unverified (a large dataset): passes the cheap check
    assert len(src) == 8
    with pytest.raises(DataError, match=str(victim)) as e:
        for _ in make_loader(src, "eval", batch_size=4, image_size=8):
            pass
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_gpu_graph_defines_without_a_gpu(src, recipe):
    """The same pipeline definition with mixed decode and GPU operators: its Python graph (device
    placement, conditionals) is checked here; running it needs CUDA (test_cuda_pipeline)."""
    from fastssl.data.pipeline import ssl_pipeline

    r = RECIPES[recipe]
    pipe = ssl_pipeline(files=src.files[:2], labels=src.labels[:2], recipe=r, decode_device="mixed",
                        image_size=16, opts=r.options(None), output="float", batch_size=2, num_threads=1,
                        device_id=None, seed=1)
    if not hasattr(pipe, "_build_graph"):
        pytest.skip("this DALI version has no Pipeline._build_graph")
    pipe._build_graph()
    outs = getattr(pipe, "_graph_outputs", None)
    if outs is not None:  # the views come out on the GPU, the labels on the CPU
        assert [getattr(o, "device", None) for o in outs] == ["gpu"] * r.n_views + ["cpu"]
