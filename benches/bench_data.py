"""Images/s of the DALI CPU SimCLR two-view pipeline vs the loader a user would otherwise write: a torch
DataLoader over PIL decode + the same transforms in PIL/numpy/torch, with the same number of workers.

Both sides produce the same thing per image: two 224x224 float32 NCHW views, normalized, with random
resized crop (0.08, 1), flip, colour jitter p=0.8 (0.4/0.4/0.4/0.1), grayscale p=0.2, Gaussian blur
(p=1.0 / 0.1) and solarize (p=0 / 0.2), from ~500x375 JPEGs. One timed call = one full epoch, including
the DALI pipeline build (fastssl builds one per epoch); the baseline keeps persistent workers, which
favours it. Run: pytest benches/bench_data.py --benchmark-only -s
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from harness import compare
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from fastssl.data import ImageFolderSource, make_loader

N_IMAGES, N_CLASSES, W, H = 240, 8, 500, 375
SIZE, BATCH, WORKERS = 224, 40, 2
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Photo-like JPEGs (smooth colour fields + edges + noise, ~30-60 kB each) in ImageNet layout."""
    root = tmp_path_factory.mktemp("bench_jpegs")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        d = root / f"class{i % N_CLASSES}"
        d.mkdir(exist_ok=True)
        low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((W, H), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 8, img.shape)
        yy, xx = np.mgrid[0:H, 0:W]
        img[(xx - rng.uniform(0, W)) ** 2 + (yy - rng.uniform(0, H)) ** 2 < rng.uniform(40, 120) ** 2] *= 0.5
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:05d}.JPEG", quality=90)
    return ImageFolderSource(root)


# ---------------------------------------------------------------- the baseline a user would write

def _rrc_box(w, h, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision.transforms.RandomResizedCrop.get_params, in plain Python."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * ar)), round(math.sqrt(target / ar))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    s = min(w, h)
    return (w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s


def _view(img, rng, blur_p, solarize_p):
    img = img.resize((SIZE, SIZE), Image.BILINEAR, box=_rrc_box(*img.size, rng))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if rng.random() < 0.8:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
        hsv = np.array(img.convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-0.1, 0.1) * 255)) % 256
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    if rng.random() < 0.2:
        img = img.convert("L").convert("RGB")
    if rng.random() < blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    if rng.random() < solarize_p:
        img = ImageOps.solarize(img, 128)
    t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return t.sub_(MEAN).div_(STD)


class PILSimCLR(torch.utils.data.Dataset):
    def __init__(self, src):
        self.files, self.labels = src.files, src.labels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        rng = random.Random(i * 7919 + torch.initial_seed())
        img = Image.open(self.files[i]).convert("RGB")
        return _view(img, rng, 1.0, 0.0), _view(img, rng, 0.1, 0.2), self.labels[i]


def test_simclr_two_view_images_per_s(benchmark, jpeg_folder):
    src = jpeg_folder
    dl = torch.utils.data.DataLoader(PILSimCLR(src), batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                     persistent_workers=True, drop_last=False)
    counter = {"epoch": 0}

    def fastssl_epoch():
        counter["epoch"] += 1
        loader = make_loader(src, "simclr", batch_size=BATCH, epoch=counter["epoch"], image_size=SIZE,
                             num_threads=WORKERS, drop_last=False)
        n, shape = 0, None
        for views, labels in loader:
            n, shape = n + labels.numel(), views[0].shape
        assert n == N_IMAGES and shape[1:] == (3, SIZE, SIZE)

    def baseline_epoch():
        n, shape = 0, None
        for v1, _v2, labels in dl:
            n, shape = n + labels.numel(), v1.shape
        assert n == N_IMAGES and shape[1:] == (3, SIZE, SIZE)

    shape = f"{N_IMAGES}x{W}x{H}->2x{SIZE}"
    out = compare(benchmark, "data_simclr_2view_cpu", shape, fastssl_epoch,
                  {f"torch_dataloader_pil_{WORKERS}w": baseline_epoch}, device="cpu", rounds=3,
                  measure_memory=False,
                  extra=f"threads=workers={WORKERS}; images/s = {N_IMAGES}*1000/ms")
    base = out[f"torch_dataloader_pil_{WORKERS}w"]
    ips, bips = N_IMAGES * 1e3 / out["ms"], N_IMAGES * 1e3 / base["ms"]
    benchmark.extra_info.update(images_per_s=round(ips, 1), baseline_images_per_s=round(bips, 1))
    print(f"\nDALI CPU simclr: {ips:.1f} images/s; PIL DataLoader: {bips:.1f} images/s; "
          f"ratio {base['ratio']:.2f}x")
