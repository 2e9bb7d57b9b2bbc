"""sample_tiles on the CPU against the per-sample loop users write for jigsaw puzzles (VISSL / the original
Caffe-era data layers: per image, per grid cell, a random PIL crop, to tensor, per-tile normalization, one
random permutation), same images, same tile size, same options, in the same run."""

import harness
import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.ops import jigsaw_permutations, sample_tiles

GRID = 3


def pil_jigsaw(images: list, perms: torch.Tensor, tile: int, gray_p: float, rng: np.random.Generator):
    """The user loop: PIL images in, (B, 9, 3, t, t) float tiles and labels out."""
    batch, labels = [], []
    for img in images:
        if rng.random() < gray_p:
            img = img.convert("L").convert("RGB")
        w, h = img.size
        xs = [i * w // GRID for i in range(GRID + 1)]
        ys = [i * h // GRID for i in range(GRID + 1)]
        tiles = []
        for cell in range(GRID * GRID):
            gy, gx = divmod(cell, GRID)
            y = ys[gy] + int(rng.integers(0, ys[gy + 1] - ys[gy] - tile + 1))
            x = xs[gx] + int(rng.integers(0, xs[gx + 1] - xs[gx] - tile + 1))
            t = torch.from_numpy(np.asarray(img.crop((x, y, x + tile, y + tile)), dtype=np.float32) / 255)
            t = t.permute(2, 0, 1)
            mean, std = t.mean((1, 2), keepdim=True), t.std((1, 2), unbiased=False, keepdim=True)
            tiles.append((t - mean) / torch.sqrt(std ** 2 + 1e-5))
        label = int(rng.integers(0, perms.shape[0]))
        batch.append(torch.stack([tiles[int(i)] for i in perms[label]]))
        labels.append(label)
    return torch.stack(batch), torch.tensor(labels)


@pytest.mark.parametrize("B,side,tile", [(256, 64, 16), (64, 255, 64)])
def test_bench_sample_tiles_cpu(benchmark, B, side, tile):
    perms = jigsaw_permutations(100)
    x = torch.randint(0, 256, (B, side, side, 3), dtype=torch.uint8)  # NHWC uint8, as decoded
    pil = [Image.fromarray(a) for a in x.numpy()]
    fn = lambda: sample_tiles(x, "jigsaw", tile=tile, perms=perms, normalize=True, gray_p=0.3,  # noqa: E731
                              channels_last=True)
    base = lambda: pil_jigsaw(pil, perms, tile, 0.3, np.random.default_rng(0))  # noqa: E731
    assert fn().tiles.shape == base()[0].shape == (B, 9, 3, tile, tile)
    res = harness.compare(benchmark, "sample_tiles", f"jigsaw,B={B},{side}px,t={tile},uint8,norm", fn,
                          {"pil_loop": base}, device="cpu", rounds=3)
    print(f"sample_tiles B={B} {side}px tile {tile}: {res['ms']:.1f} ms, per-sample PIL loop "
          f"{res['pil_loop']['ms']:.1f} ms ({res['pil_loop']['ratio']:.1f}x)")
