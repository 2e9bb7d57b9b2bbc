"""fastssl.ops.sample_tiles: the C++/CUDA tile sampler against its PyTorch spec, its draws, its errors."""

import re

import pytest
import torch

from fastssl.ops import jigsaw_permutations, sample_tiles, sample_tiles_ref
from fastssl.ops.sample_tiles import cell_bounds, n_draws, neighbour_cell, random_draws, sample_tiles_op
from tests.helpers import TOL

PERMS = jigsaw_permutations(100)


def _images(B, C, H, W, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else (x * 4 - 2).to(dtype)
    return x.to(device)


def _kw(task, tile, grid=3, perms=PERMS, device="cpu", **kw):
    return dict(task=task, tile=tile, grid=grid, perms=perms.to(device) if task == "jigsaw" else None, **kw)


def _bound(out, ref, dtype):
    """Error bound relative to the scale of the values (an all-zero result fails it)."""
    scale = ref.double().abs().max().item()
    tol = TOL.get(dtype, TOL[torch.float32])
    return tol["atol"] + tol["rtol"] * scale


# Odd sizes: non-square, sides not divisible by the grid, the smallest legal side, 1, 2 and 4 channels.
SHAPES = [(3, 3, 64, 64, 16), (5, 3, 67, 61, 17), (1, 3, 9, 9, 3), (2, 1, 31, 40, 7), (4, 4, 25, 22, 5),
          (3, 2, 29, 33, 8)]


@pytest.mark.parametrize("task", ["jigsaw", "context"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.uint8, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
def test_tiles_equal_reference_given_draws(task, dtype, normalize):
    for B, C, H, W, t in SHAPES:
        x = _images(B, C, H, W, dtype)
        gray_p = 0.5 if C == 3 else 0.0
        d = random_draws(B, task=task, grid=3, tile=t, height=H, width=W, channels=C, num_perms=100,
                         gray_p=gray_p, drop_p=0.5, generator=torch.Generator().manual_seed(B + H))
        out = sample_tiles(x, draws=d, normalize=normalize, **_kw(task, t))
        assert torch.equal(out.draws, d) and torch.equal(out.labels, d[:, 0])
        ref = sample_tiles_ref(x, d, normalize=normalize, **_kw(task, t))
        n = 9 if task == "jigsaw" else 2
        assert out.tiles.shape == (B, n, C, t, t) == ref.shape
        assert out.tiles.dtype == (torch.float32 if dtype == torch.uint8 else dtype) == ref.dtype
        if not normalize and dtype != torch.uint8:
            assert torch.equal(out.tiles, ref)  # a pure copy (+ exact luma formula) is bit-exact
        err = (out.tiles.double() - ref.double()).abs().max().item()
        # bf16/fp16 outputs: one rounding of the output dtype apart at most.
        bound = _bound(out.tiles, ref, dtype) if dtype not in (torch.bfloat16, torch.float16) else \
            2 * torch.finfo(dtype).eps * ref.double().abs().max().item()
        assert err <= bound, (B, C, H, W, t, err, bound)


@pytest.mark.parametrize("task", ["jigsaw", "context"])
def test_philox_draws_match_reference_and_are_in_range(task):
    x = _images(64, 3, 67, 61, torch.float32)
    out = sample_tiles(x, normalize=True, gray_p=0.3, drop_p=0.3, generator=torch.Generator().manual_seed(1),
                       **_kw(task, 17))
    ref = sample_tiles_ref(x, out.draws, normalize=True, **_kw(task, 17))
    assert (out.tiles - ref).abs().max() <= _bound(out.tiles, ref, torch.float32)
    d = out.draws
    assert d.shape == (64, n_draws(task)) and d.dtype == torch.int64
    assert set(d[:, 1].tolist()) <= {0, 1} and set(d[:, 2].tolist()) <= {-1, 0, 1, 2}
    assert (d[:, 3:] >= 0).all() and (d[:, 3:] <= 23 - 17).all()  # cells of 22/22/23 and 20/20/21 px


def test_same_seed_same_bits_any_thread_count_and_different_seed_differs():
    x = _images(33, 3, 64, 64, torch.uint8)
    kw = dict(normalize=True, gray_p=0.3, drop_p=0.2, **_kw("jigsaw", 16))
    a = sample_tiles(x, generator=torch.Generator().manual_seed(5), **kw)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = sample_tiles(x, generator=torch.Generator().manual_seed(5), **kw)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.tiles, b.tiles) and torch.equal(a.draws, b.draws)
    c = sample_tiles(x, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(a.draws, c.draws)
    # Without a generator, the default one: reproducible under torch.manual_seed.
    torch.manual_seed(3)
    e = sample_tiles(x, **kw)
    torch.manual_seed(3)
    assert torch.equal(e.draws, sample_tiles(x, **kw).draws)


def test_inverting_the_permutation_reassembles_the_grid():
    # Tiles as large as the cells (63 = 3 x 21, tile 21): no jitter, the grid is the whole image.
    x = _images(6, 3, 63, 63, torch.float32)
    out = sample_tiles(x, **_kw("jigsaw", 21))
    assert (out.draws[:, 3:] == 0).all()
    for b in range(6):
        perm = PERMS[out.labels[b]]
        grid_order = out.tiles[b, perm.argsort()]  # (9, C, 21, 21) in row-major cell order
        image = grid_order.view(3, 3, 3, 21, 21).permute(2, 0, 3, 1, 4).reshape(3, 63, 63)
        assert torch.equal(image, x[b])
    # With jitter: every tile, put back in cell order, is the image at its cell's origin + its offset.
    x = _images(6, 3, 64, 64, torch.float32)
    out = sample_tiles(x, generator=torch.Generator().manual_seed(0), **_kw("jigsaw", 15))
    bounds = cell_bounds(64, 3)
    for b in range(6):
        tiles = out.tiles[b, PERMS[out.labels[b]].argsort()]
        for cell in range(9):
            dy, dx = out.draws[b, 3 + 2 * cell:5 + 2 * cell].tolist()
            y, xx = bounds[cell // 3] + dy, bounds[cell % 3] + dx
            assert torch.equal(tiles[cell], x[b, :, y:y + 15, xx:xx + 15])


def test_context_pair_is_centre_and_labelled_neighbour():
    x = _images(16, 3, 63, 63, torch.float32)
    out = sample_tiles(x, **_kw("context", 21))
    for b in range(16):
        cy, cx = divmod(neighbour_cell(int(out.labels[b])), 3)
        assert torch.equal(out.tiles[b, 0], x[b, :, 21:42, 21:42])
        assert torch.equal(out.tiles[b, 1], x[b, :, 21 * cy:21 * cy + 21, 21 * cx:21 * cx + 21])


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


# Critical values of chi-square at p = 0.001 (scipy.stats.chi2.ppf(0.999, df)).
CHI2_999 = {7: 24.322, 9: 27.877, 99: 148.230}


@pytest.mark.parametrize("task,k", [("jigsaw", 10), ("jigsaw", 100), ("context", 8)])
def test_labels_are_uniform(task, k):
    x = _images(40000, 1, 6, 6, torch.uint8)
    perms = jigsaw_permutations(k) if task == "jigsaw" else PERMS
    out = sample_tiles(x, generator=torch.Generator().manual_seed(0), **_kw(task, 2, perms=perms))
    counts = torch.bincount(out.labels, minlength=k).double()
    assert counts.numel() == k and (counts > 0).all()
    assert _chi_square(counts) < CHI2_999[k - 1], counts


def test_jitter_and_coins_are_uniform():
    # 64 px, tile 16: the offset ranges are 0..5 (21 px cells) and 0..6 (the last, 22 px cell).
    x = _images(1, 3, 64, 64, torch.uint8).expand(20000, -1, -1, -1)  # batch stride 0: no copy
    out = sample_tiles(x, gray_p=0.3, drop_p=0.2,
                       generator=torch.Generator().manual_seed(2), **_kw("jigsaw", 16))
    d = out.draws
    for s, size in [(0, 21), (8, 22)]:
        dy = d[:, 3 + 2 * s]
        counts = torch.bincount(dy, minlength=size - 16 + 1).double()
        assert counts.numel() == size - 16 + 1
        df = counts.numel() - 1
        assert _chi_square(counts) < {5: 20.515, 6: 22.458}[df], counts
    n = d.shape[0]
    for rate, p in [(d[:, 1].double().mean(), 0.3), ((d[:, 2] >= 0).double().mean(), 0.2)]:
        assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5  # within 4 sigma of a binomial
    kept = d[d[:, 2] >= 0, 2]
    assert _chi_square(torch.bincount(kept, minlength=3).double()) < 13.816  # df 2


def test_per_tile_normalization_statistics():
    x = _images(8, 3, 67, 61, torch.float32)
    for task in ("jigsaw", "context"):
        out = sample_tiles(x, normalize=True, **_kw(task, 17)).tiles.double()
        mean, std = out.mean((-1, -2)), out.std((-1, -2), unbiased=False)
        assert mean.abs().max() < 1e-5
        # var / (var + eps): the tiles' variance (~1.3 for U(-2, 2)) dwarfs eps = 1e-5
        assert (std - 1).abs().max() < 1e-4
    # Dropped channels are 0; the kept one is still normalized. Gray tiles have 3 equal channels.
    out = sample_tiles(x, normalize=True, drop_p=1.0, **_kw("jigsaw", 17))
    for b in range(8):
        keep = int(out.draws[b, 2])
        others = [c for c in range(3) if c != keep]
        assert (out.tiles[b, :, others] == 0).all()
        assert (out.tiles[b, :, keep].double().std((-1, -2), unbiased=False) - 1).abs().max() < 1e-4
    gray = sample_tiles(x, gray_p=1.0, **_kw("context", 17)).tiles
    assert torch.equal(gray[:, :, 0], gray[:, :, 1]) and torch.equal(gray[:, :, 0], gray[:, :, 2])


def test_layouts_and_strides():
    x = _images(4, 3, 64, 64, torch.float32)
    d = random_draws(4, task="jigsaw", grid=3, tile=16, height=64, width=64, channels=3, num_perms=100)
    want = sample_tiles(x, draws=d, normalize=True, **_kw("jigsaw", 16)).tiles
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(sample_tiles(cl, draws=d, normalize=True, **_kw("jigsaw", 16)).tiles, want)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    got = sample_tiles(nhwc, draws=d, normalize=True, channels_last=True, **_kw("jigsaw", 16)).tiles
    assert torch.equal(got, want)
    big = _images(4, 3, 70, 80, torch.float32)
    big[:, :, 3:67, 10:74] = x
    assert torch.equal(sample_tiles(big[:, :, 3:67, 10:74], draws=d, normalize=True, **_kw("jigsaw", 16)).tiles,
                       want)


def test_grid_2_and_4():
    for grid, side, t in [(2, 30, 11), (4, 41, 7)]:
        g = torch.Generator().manual_seed(grid)
        perms = torch.stack([torch.randperm(grid * grid, generator=g) for _ in range(20)])  # 16! is too many
        x = _images(3, 3, side, side, torch.float64)
        out = sample_tiles(x, generator=torch.Generator().manual_seed(grid), **_kw("jigsaw", t, grid, perms))
        assert out.tiles.shape == (3, grid * grid, 3, t, t)
        assert torch.equal(out.tiles, sample_tiles_ref(x, out.draws, **_kw("jigsaw", t, grid, perms)))


def test_empty_batch():
    out = sample_tiles(_images(0, 3, 64, 64, torch.float32), **_kw("jigsaw", 16))
    assert out.tiles.shape == (0, 9, 3, 16, 16) and out.draws.shape == (0, 21)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(images=torch.zeros(3, 64, 64)), "must be 4-D"),
        (dict(images=torch.zeros(2, 3, 40, 64)), "too small for a 3x3 grid of 16 px tiles"),
        (dict(images=torch.zeros(2, 3, 64, 64, dtype=torch.int32)), "uint8 or floating point"),
        (dict(tile=0), "tile must be >= 1"),
        (dict(perms=PERMS[:, :8]), "perms must be [K, 9]"),
        (dict(perms=torch.cat([PERMS[:3], torch.zeros(1, 9, dtype=torch.long)])), "row 3 is not a permutation"),
        (dict(perms=PERMS.clone().index_fill_(1, torch.tensor([0]), 9)), "row 0 is not a permutation"),
        (dict(perms=PERMS[:0]), "need 1 <= K"),
        (dict(grid=5), "grid must be in [2, 4]"),
        (dict(gray_p=1.5), "gray_p must be in [0, 1]"),
        (dict(images=torch.zeros(2, 1, 64, 64), gray_p=0.5), "grayscale (gray_p > 0) needs 3 channels, got 1"),
        (dict(tile=2**62, grid=4, perms=torch.stack([torch.randperm(16) for _ in range(3)])), "too small"),
        (dict(tile=2**61), "too small"),
        (dict(draws=torch.zeros(2, 20, dtype=torch.long)), "draws must be [B, 21]"),
        (dict(draws=torch.tensor([[100] + [0] * 20, [0] * 21])), "draws row 0 is out of range"),
        (dict(draws=torch.tensor([[0] * 21, [0, 0, -1] + [6] + [0] * 17])), "draws row 1 is out of range"),
        (dict(draws=torch.tensor([[0, 2] + [0] * 19, [0] * 21])), "draws row 0 is out of range"),
    ],
)
def test_bad_input_is_a_clear_error(change, message):
    args = dict(images=torch.zeros(2, 3, 64, 64), task="jigsaw", tile=16, perms=PERMS, grid=3)
    args.update(change)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        sample_tiles(**args)


def _bad_draws(task, C, H=31, W=34, tile=9, B=3, seed=0):
    """(name, draws) pairs, each with one out-of-range entry in row 1 (every column kind the kernels index
    with: label, gray flag, kept channel, first and last slot's dy / dx, both ends of each range)."""
    d = random_draws(B, task=task, grid=3, tile=tile, height=H, width=W, channels=C, num_perms=100, drop_p=0.5,
                     generator=torch.Generator().manual_seed(seed))
    K = 100 if task == "jigsaw" else 8
    last = n_draws(task) - 2  # the last slot's dy column
    cases = [("label=K", 0, K), ("label=-1", 0, -1), ("gray=2", 1, 2), ("gray=-1", 1, -1), ("keep=C", 2, C),
             ("keep=-2", 2, -2), ("dy=-1", 3, -1), ("dx=-1", 4, -1), ("last dy=-1", last, -1),
             ("dy=2^40", 3, 2**40)]
    # The first value past each jitter range (cells of 10/10/11 and 11/11/12 px, tile 9).
    for col in (3, 4, last, last + 1):
        slot = (col - 3) // 2
        cell = slot if task == "jigsaw" else (4 if slot == 0 else neighbour_cell(int(d[1, 0])))
        gy, gx = divmod(cell, 3)
        side = cell_bounds(H, 3) if col % 2 == 1 else cell_bounds(W, 3)
        g = gy if col % 2 == 1 else gx
        cases.append((f"col {col} = range", col, side[g + 1] - side[g] - tile + 1))
    if C != 3:
        cases.append(("gray=1 with C != 3", 1, 1))
    out = []
    for name, col, value in cases:
        bad = d.clone()
        bad[1, col] = value
        out.append((name, bad))
    return d, out


@pytest.mark.parametrize("task", ["jigsaw", "context"])
@pytest.mark.parametrize("C", [1, 2, 3, 4])
def test_out_of_range_draws_are_refused_by_op_and_reference_alike(task, C):
    """Every out-of-range draws entry (gray for C != 3 included: it used to read channels 1 and 2 of a 1- or
    2-channel tile and write past the CPU kernel's buffer) is a clear error naming row, column and range,
    the same from the op and from sample_tiles_ref, raised before anything is written."""
    x = _images(3, C, 31, 34, torch.float32)
    good, cases = _bad_draws(task, C)
    for name, bad in cases:
        with pytest.raises(RuntimeError, match=r"draws row 1 is out of range: column \d+ \(") as op_err:
            sample_tiles(x, draws=bad, **_kw(task, 9))
        with pytest.raises(RuntimeError) as ref_err:
            sample_tiles_ref(x, bad, **_kw(task, 9))
        assert str(ref_err.value) in str(op_err.value), (name, str(op_err.value), str(ref_err.value))
    # The rows that are in range still cut the reference's tiles.
    out = sample_tiles(x, draws=good, normalize=True, **_kw(task, 9)).tiles
    ref = sample_tiles_ref(x, good, normalize=True, **_kw(task, 9))
    assert (out - ref).abs().max() <= _bound(out, ref, torch.float32)


@pytest.mark.parametrize("C", [1, 2, 4])
def test_gray_draws_need_three_channels(C, monkeypatch):
    """The decision (module doc): grayscale is RGB only; a gray flag for C != 3 names the rule."""
    x = _images(2, C, 30, 30, torch.uint8)
    for backend in ("native", "ref"):
        monkeypatch.setenv("FASTSSL_BACKEND", backend)
        with pytest.raises(RuntimeError, match=re.escape(f"grayscale (gray_p > 0) needs 3 channels, got {C}")):
            sample_tiles(x, "context", tile=8, gray_p=0.5)
    monkeypatch.delenv("FASTSSL_BACKEND")
    d = random_draws(2, task="context", grid=3, tile=8, height=30, width=30, channels=C)
    d[:, 1] = 1
    want = f"draws row 0 is out of range: column 1 (grayscale flag) = 1, must be 0 or 1 and 0 for {C}-channel " \
           "images (grayscale needs 3 channels)"
    for fn in (lambda: sample_tiles(x, "context", tile=8, draws=d),
               lambda: sample_tiles_ref(x, d, task="context", tile=8)):
        with pytest.raises(RuntimeError, match=re.escape(want)):
            fn()
    d[:, 1] = 0  # the same rows without grayscale: the reference's values
    out = sample_tiles(x, "context", tile=8, draws=d).tiles
    ref = sample_tiles_ref(x, d, task="context", tile=8)
    assert out.abs().max() > 0 and (out - ref).abs().max() <= _bound(out, ref, torch.float32)


def test_reference_refuses_bad_perms_like_the_op():
    x = _images(2, 3, 64, 64, torch.float32)
    d = random_draws(2, task="jigsaw", grid=3, tile=16, height=64, width=64, channels=3, num_perms=4)
    for perms, msg in [(torch.cat([PERMS[:3], PERMS[:1, [0] * 9]]), "perms row 3 is not a permutation of 0..8"),
                       (PERMS[:4].clone().index_fill_(1, torch.tensor([2]), -1), "perms row 0 is not"),
                       (PERMS[:4, :8], "perms must be [K, 9]")]:
        with pytest.raises(RuntimeError, match=re.escape(msg)):
            sample_tiles(x, draws=d, **_kw("jigsaw", 16, perms=perms))
        with pytest.raises(RuntimeError, match=re.escape(msg)):
            sample_tiles_ref(x, d, **_kw("jigsaw", 16, perms=perms))


def test_cpu_op_reads_no_tensor_values_back_through_aten():
    """The shared argument checks read no tensor values through aten (item / _local_scalar_dense: a host
    sync on CUDA); the values are checked on the host from CPU memory (see the module doc)."""
    x = _images(2, 3, 31, 34, torch.float32)
    d = random_draws(2, task="jigsaw", grid=3, tile=9, height=31, width=34, channels=3, num_perms=100)
    op = sample_tiles_op()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        op(x, PERMS, d, 0, 3, 9, 0, False, True, 0.0, 0.5, 1e-5)  # given draws
        op(x, PERMS, None, 0, 3, 9, 7, False, True, 0.5, 0.5, 1e-5)  # Philox draws
        op(x, None, None, 1, 3, 9, 7, False, True, 0.5, 0.5, 1e-5)  # context
    names = {e.name for e in prof.events()}
    assert "fastssl::sample_tiles" in names, names
    assert not names & {"aten::item", "aten::_local_scalar_dense"}, names


def test_context_errors_and_missing_perms():
    with pytest.raises(RuntimeError, match="context needs grid=3"):
        sample_tiles(torch.zeros(2, 3, 64, 64), "context", tile=8, grid=4)
    with pytest.raises(ValueError, match="needs perms"):
        sample_tiles(torch.zeros(2, 3, 64, 64), "jigsaw", tile=16)
    with pytest.raises(ValueError, match="task must be one of"):
        sample_tiles(torch.zeros(2, 3, 64, 64), "rotation", tile=16)


def test_ref_backend_draws_from_the_same_distribution(monkeypatch):
    monkeypatch.setenv("FASTSSL_BACKEND", "ref")
    x = _images(5, 3, 64, 64, torch.float32)
    out = sample_tiles(x, normalize=True, **_kw("jigsaw", 16))
    monkeypatch.delenv("FASTSSL_BACKEND")
    assert torch.allclose(out.tiles, sample_tiles(x, normalize=True, draws=out.draws, **_kw("jigsaw", 16)).tiles,
                          atol=1e-5)


@pytest.mark.parametrize("task", ["jigsaw", "context"])
def test_opcheck(task):
    op = sample_tiles_op()
    x = _images(3, 3, 31, 34, torch.float32)
    perms = PERMS if task == "jigsaw" else None
    mode = 0 if task == "jigsaw" else 1
    d = random_draws(3, task=task, grid=3, tile=9, height=31, width=34, channels=3, num_perms=100, gray_p=0.5,
                     drop_p=0.5)
    torch.library.opcheck(op, (x, perms, d, mode, 3, 9, 0, False, True, 0.5, 0.5, 1e-5))
    torch.library.opcheck(op, (x, perms, None, mode, 3, 9, 1234, False, True, 0.5, 0.5, 1e-5))
    u8 = _images(2, 3, 31, 31, torch.uint8).permute(0, 2, 3, 1)
    torch.library.opcheck(op, (u8, perms, None, mode, 3, 9, -7, True, False, 0.0, 0.0, 1e-5))


def test_compile_fullgraph_equals_eager():
    x = _images(4, 3, 64, 64, torch.float32)
    d = random_draws(4, task="jigsaw", grid=3, tile=16, height=64, width=64, channels=3, num_perms=100)

    def f(x, d):
        return sample_tiles(x, draws=d, normalize=True, **_kw("jigsaw", 16)).tiles * 2

    want = f(x, d)  # eager first: loads the extension (compiled code never builds it)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True, backend="aot_eager")(x, d), want)


@pytest.mark.cuda
@pytest.mark.parametrize("task", ["jigsaw", "context"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
def test_cuda_equals_cpu_same_seed(task, dtype):
    x = _images(37, 3, 67, 64, dtype)
    kw = dict(gray_p=0.3, drop_p=0.3)
    for normalize in (False, True):
        cpu = sample_tiles(x, normalize=normalize, generator=torch.Generator().manual_seed(9), **kw,
                           **_kw(task, 17))
        gpu = sample_tiles(x.cuda(), normalize=normalize, generator=torch.Generator().manual_seed(9), **kw,
                           **_kw(task, 17, device="cuda"))
        assert torch.equal(gpu.draws.cpu(), cpu.draws)  # the same Philox numbers on both devices
        if not normalize:
            assert torch.equal(gpu.tiles.cpu(), cpu.tiles)
        ref = sample_tiles_ref(x, cpu.draws, normalize=normalize, **_kw(task, 17))
        err = (gpu.tiles.cpu().double() - ref.double()).abs().max().item()
        bound = _bound(ref, ref, dtype) if dtype != torch.bfloat16 else 2 * torch.finfo(dtype).eps * ref.abs().max()
        assert err <= bound


@pytest.mark.cuda
def test_cuda_given_draws_layouts_and_opcheck():
    x = _images(5, 3, 64, 64, torch.float32)
    d = random_draws(5, task="jigsaw", grid=3, tile=16, height=64, width=64, channels=3, num_perms=100,
                     gray_p=0.5, drop_p=0.5)
    want = sample_tiles_ref(x, d, normalize=True, **_kw("jigsaw", 16))
    xc = x.cuda().contiguous(memory_format=torch.channels_last)
    got = sample_tiles(xc, draws=d.cuda(), normalize=True, **_kw("jigsaw", 16, device="cuda"))
    assert (got.tiles.cpu() - want).abs().max() <= _bound(want, want, torch.float32)
    torch.library.opcheck(sample_tiles_op(), (xc, PERMS.cuda(), d.cuda(), 0, 3, 16, 0, False, True, 0.5, 0.5, 1e-5))
    # CPU draws and perms with CUDA images: checked on the host, copied; the same tiles, on the device.
    host = sample_tiles(xc, draws=d, normalize=True, **_kw("jigsaw", 16))
    assert host.tiles.device == xc.device and host.draws.device == xc.device
    assert torch.equal(host.tiles, got.tiles) and torch.equal(host.draws.cpu(), d)
    torch.library.opcheck(sample_tiles_op(), (xc, PERMS, d, 0, 3, 16, 0, False, True, 0.5, 0.5, 1e-5))
    with pytest.raises(RuntimeError, match="perms on cuda"):
        sample_tiles(x, draws=d, **_kw("jigsaw", 16, device="cuda"))  # CPU images, CUDA perms
    with pytest.raises(RuntimeError, match="draws on cuda"):
        sample_tiles(x, draws=d.cuda(), **_kw("jigsaw", 16))  # CPU images, CUDA draws


@pytest.mark.cuda
@pytest.mark.parametrize("C", [1, 2, 4])
def test_cuda_checks_cpu_draws_and_perms_on_the_host(C):
    x = _images(3, C, 31, 34, torch.float32).cuda()
    good, cases = _bad_draws("jigsaw", C)
    for _, bad in cases:
        with pytest.raises(RuntimeError, match=r"draws row 1 is out of range: column \d+ \("):
            sample_tiles(x, draws=bad, **_kw("jigsaw", 9, device="cuda"))
    perms = PERMS.clone()
    perms[5, 0] = perms[5, 1]
    with pytest.raises(RuntimeError, match="perms row 5 is not a permutation"):
        sample_tiles(x, draws=good, **_kw("jigsaw", 9, perms=perms))
    with pytest.raises(RuntimeError, match=re.escape(f"grayscale (gray_p > 0) needs 3 channels, got {C}")):
        sample_tiles(x, gray_p=0.5, **_kw("jigsaw", 9, device="cuda"))
    out = sample_tiles(x, draws=good, normalize=True, **_kw("jigsaw", 9))
    ref = sample_tiles_ref(x.cpu(), good, normalize=True, **_kw("jigsaw", 9))
    assert (out.tiles.cpu() - ref).abs().max() <= _bound(ref, ref, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("task", ["jigsaw", "context"])
def test_cuda_device_draws_out_of_range_give_nan_tiles_and_the_context_survives(task):
    """Device draws are checked by the kernel, not asserted: the bad sample's tiles are NaN, the others are
    the reference's, nothing faults and the CUDA context stays usable (module doc)."""
    x = _images(3, 2, 31, 34, torch.float32)
    good, cases = _bad_draws(task, 2)
    ref = sample_tiles_ref(x, good, normalize=True, **_kw(task, 9))
    bound = _bound(ref, ref, torch.float32)
    for name, bad in cases:
        out = sample_tiles(x.cuda(), draws=bad.cuda(), normalize=True, **_kw(task, 9, device="cuda"))
        tiles = out.tiles.cpu()  # a sync: an assert or a fault in the kernel would surface here
        assert tiles[1].isnan().all(), name
        assert (tiles[[0, 2]] - ref[[0, 2]]).abs().max() <= bound, name
        assert torch.equal(out.draws.cpu(), bad)
    if task == "jigsaw":  # device perms: a sample indexing a row that is not a permutation gets NaN tiles
        good[:, 0] = torch.tensor([0, 1, 2])
        ref = sample_tiles_ref(x, good, normalize=True, **_kw(task, 9))
        for row in ([9] + list(range(1, 9)), [0, 0] + list(range(2, 9)), [-1] + list(range(1, 9))):
            perms = PERMS.clone()
            perms[2] = torch.tensor(row)
            out = sample_tiles(x.cuda(), draws=good.cuda(), normalize=True, **_kw(task, 9, perms=perms, device="cuda"))
            tiles = out.tiles.cpu()
            assert tiles[2].isnan().all() and (tiles[:2] - ref[:2]).abs().max() <= bound
            # Philox draws: the samples whose label is 2 (and only those) get NaN tiles.
            xs = _images(64, 2, 31, 34, torch.float32).cuda()
            out = sample_tiles(xs, generator=torch.Generator().manual_seed(0), **_kw(task, 9, perms=perms[:4],
                                                                                      device="cuda"))
            hit = out.labels.cpu() == 2
            tiles = out.tiles.cpu()
            assert hit.any() and tiles[hit].isnan().all() and not tiles[~hit].isnan().any()
    torch.cuda.synchronize()
    assert torch.ones(4, device="cuda").sum().item() == 4  # the context is alive
