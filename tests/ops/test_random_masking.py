"""random_masking: sizes (L_keep = L - round(L r), >= 1), the outputs' invariants (ids_keep sorted,
ids_restore the inverse permutation of [kept | masked], mask), the same masks on the CPU path, the
Triton kernel and the original algorithm, Philox bit-exactness against tl.randint, uniformity
(chi-square over many draws), reproducibility, bad input, opcheck and torch.compile."""

import math

import pytest
import torch
from mae_helpers import _one_thread, use_backend  # noqa: F401  (_one_thread: autouse fixture)

from fastssl.ops import random_masking, random_masking_ref
from fastssl.ops.random_masking import draw_seed, masking_keys, num_keep, philox_uint32

RATIOS = [0.0, 0.5, 0.75, 0.9]


def _check_invariants(ids_keep, ids_restore, mask, b, n, k):
    assert ids_keep.shape == (b, k) and ids_restore.shape == (b, n) and mask.shape == (b, n)
    assert ids_keep.dtype == ids_restore.dtype == torch.int64 and mask.dtype == torch.float32
    assert bool((ids_keep[:, 1:] > ids_keep[:, :-1]).all()), "ids_keep must be strictly ascending"
    kept = torch.zeros(b, n, dtype=torch.bool).scatter_(1, ids_keep, True)
    assert torch.equal(mask, (~kept).float())
    # ids_restore is the inverse of the shuffle [kept ascending | masked ascending]
    masked_pos = torch.stack([torch.nonzero(~kept[i]).squeeze(1) for i in range(b)])
    shuffle = torch.cat([ids_keep, masked_pos], dim=1)
    assert torch.equal(torch.argsort(shuffle, dim=1), ids_restore)
    assert torch.equal(shuffle.gather(1, ids_restore), torch.arange(n).expand(b, n))


@pytest.mark.parametrize("n,ratio,expected", [(100, 0.9, 10), (10, 0.9, 1), (196, 0.75, 49), (64, 0.75, 16),
                                              (7, 0.0, 7), (3, 0.99, 1), (1, 0.5, 1), (5, 0.5, 3)])
def test_num_keep(n, ratio, expected):
    assert num_keep(n, ratio) == expected
    assert int(100 * (1 - 0.9)) == 9  # the original formula's floating-point loss, for the record


@pytest.mark.parametrize("bk", ["native", "triton", "ref"])
@pytest.mark.parametrize("b,n", [(1, 1), (1, 7), (3, 49), (2, 100), (5, 196)])
@pytest.mark.parametrize("ratio", RATIOS)
def test_same_masks_every_backend(monkeypatch, bk, b, n, ratio):
    use_backend(monkeypatch, bk)
    k = num_keep(n, ratio)
    ids_keep, ids_restore, mask = random_masking(b, n, ratio, generator=torch.Generator().manual_seed(11))
    # the keys the op used: the same generator state -> the same seed
    keys = masking_keys(draw_seed(torch.Generator().manual_seed(11)), b, n)
    ref_keep, ref_restore, ref_mask = random_masking_ref(keys, k)
    assert torch.equal(mask, ref_mask)
    if bk == "ref":
        assert torch.equal(ids_keep, ref_keep) and torch.equal(ids_restore, ref_restore)
        ids_keep = ids_keep.sort(dim=1).values
        ids_restore = None
    assert torch.equal(ids_keep, ref_keep.sort(dim=1).values)
    if ids_restore is not None:
        _check_invariants(ids_keep, ids_restore, mask, b, n, k)


def test_philox_matches_triton_randint():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    from fastssl.ops._backend import triton_interpreting

    if not triton_interpreting():
        pytest.skip("needs TRITON_INTERPRET=1 for CPU tensors")

    @triton.jit
    def _draw(seed_ptr, out, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        r = tl.randint(tl.load(seed_ptr), offs)
        tl.store(out + offs, r.to(tl.int64) & 0xFFFFFFFF, mask=offs < n)

    for seed in (0, 1, 2**31 + 5, 2**62 - 1, 123456789012345):
        s = torch.tensor([seed], dtype=torch.int64)
        out = torch.empty(100, dtype=torch.int64)
        _draw[(1,)](s, out, 100, BLOCK=128)
        assert torch.equal(out, philox_uint32(s[0], torch.arange(100))), seed


def test_reproducible_and_fresh_per_call():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a1, a2 = random_masking(4, 64, 0.75, generator=g1), random_masking(4, 64, 0.75, generator=g1)
    b1 = random_masking(4, 64, 0.75, generator=g2)
    assert all(torch.equal(x, y) for x, y in zip(a1, b1))
    assert not torch.equal(a1[2], a2[2]), "each call (step) must draw new masks"
    rows = a1[2]
    assert len({tuple(r.tolist()) for r in rows}) == 4, "each sample must get its own mask"


@pytest.mark.parametrize("bk", ["native", "triton"])
def test_uniform_chi_square(monkeypatch, bk):
    """Each position is masked with frequency ratio (chi-square over positions), and the number of
    masked patches per sample is exact."""
    use_backend(monkeypatch, bk)
    n, ratio, draws = 49, 0.75, 4000 if bk == "native" else 400
    g = torch.Generator().manual_seed(0)
    masks = random_masking(draws, n, ratio, generator=g)[2]
    k = num_keep(n, ratio)
    assert bool((masks.sum(1) == n - k).all())
    counts = masks.sum(0).double()
    p = (n - k) / n
    # positions are dependent through the fixed total; the statistic is still ~chi2(n-1) * (1 - 1/n)-ish:
    # a bound at the 99.99% quantile of chi2(48) (~90) leaves room for that.
    chi2 = float((((counts - draws * p) ** 2) / (draws * p * (1 - p))).sum())
    assert chi2 < 90, chi2
    # pairs of positions: masked together with probability (n-k)(n-k-1)/(n(n-1)) (uniform subsets)
    both = float((masks[:, 0] * masks[:, 1]).mean())
    expect = (n - k) * (n - k - 1) / (n * (n - 1))
    assert abs(both - expect) < 5 * math.sqrt(expect * (1 - expect) / draws)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_ratio(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 16, bad)


def test_bad_sizes_and_generator():
    with pytest.raises(ValueError, match="batch"):
        random_masking(0, 16, 0.5)
    with pytest.raises(ValueError, match="num_patches"):
        random_masking(2, 0, 0.5)
    with pytest.raises(ValueError, match="2\\*\\*31"):
        random_masking(2**12, 2**19 + 1, 0.5)
    with pytest.raises(ValueError, match="generator"):
        random_masking(2, 16, 0.5, generator=1234)


def test_opcheck_and_compile():
    seed = torch.tensor(1234, dtype=torch.int64)
    torch.library.opcheck(torch.ops.fastssl.random_masking.default, (seed, 3, 20, 5))

    def f(seed):
        ids_keep, ids_restore, mask = torch.ops.fastssl.random_masking(seed, 3, 20, 5)
        return ids_keep + 1, ids_restore * 2, mask.sum(1)

    eager = f(seed)
    compiled = torch.compile(f, fullgraph=True)(seed)
    assert all(torch.equal(a, b) for a, b in zip(eager, compiled))


@pytest.mark.cuda
def test_cuda_same_masks_as_cpu():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cpu = random_masking(64, 196, 0.75, generator=g1)
    cuda = random_masking(64, 196, 0.75, generator=g2, device="cuda")
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))


def test_op_seed_is_a_host_tensor():
    """The op reads its seed on the host (a kernel argument, never copied to the device): a one-element
    int64 CPU tensor, with the outputs on ``device``; anything else is refused in one line."""
    seed = torch.tensor(77, dtype=torch.int64)
    ids_keep, ids_restore, mask = torch.ops.fastssl.random_masking(seed, 2, 9, 3, torch.device("cpu"))
    ref_keep, _, ref_mask = random_masking_ref(masking_keys(77, 2, 9), 3)
    assert torch.equal(mask, ref_mask) and torch.equal(ids_keep, ref_keep.sort(dim=1).values)
    for bad in (torch.tensor(77, dtype=torch.int32), torch.tensor([1, 2]), torch.tensor(7.0)):
        with pytest.raises(ValueError, match="seed must be a one-element int64 CPU tensor"):
            torch.ops.fastssl.random_masking(bad, 2, 9, 3)
