"""fastssl.ops.jigsaw_permutations: the C++/CUDA greedy search against its PyTorch spec."""

import math
import time

import pytest
import torch

from fastssl.ops import (
    jigsaw_permutations,
    jigsaw_permutations_ref,
    mean_hamming_distance,
    min_hamming_distance,
)
from fastssl.ops.jigsaw_permutations import all_permutations, hamming_greedy_op


def _random_perms(k, n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = set()
    while len(rows) < k:
        rows.add(tuple(torch.randperm(n, generator=g).tolist()))
    return torch.tensor(sorted(rows))


def _assert_valid(perms, k, n):
    assert perms.shape == (k, n) and perms.dtype == torch.int64
    assert torch.equal(perms.sort(1).values, torch.arange(n).expand(k, n)), "a row is not a permutation"
    assert len({tuple(r) for r in perms.tolist()}) == k, "rows are not distinct"


@pytest.mark.parametrize("method", ["maxmin", "maxavg"])
@pytest.mark.parametrize("n,k", [(2, 1), (2, 2), (3, 6), (4, 7), (5, 17), (7, 31), (9, 12)])
def test_matches_reference(n, k, method):
    for seed in (0, 3):
        got = jigsaw_permutations(k, n, method, seed=seed, cache=False)
        _assert_valid(got, k, n)
        assert torch.equal(got, jigsaw_permutations_ref(k, n, method, seed=seed))


def test_k1000_fast_distinct_and_better_than_random():
    t0 = time.perf_counter()
    perms = jigsaw_permutations(1000, 9, "maxmin", seed=0, cache=False)
    seconds = time.perf_counter() - t0
    _assert_valid(perms, 1000, 9)
    ours, rand = min_hamming_distance(perms), min_hamming_distance(_random_perms(1000, 9, 0))
    print(f"k=1000 n=9 maxmin: {seconds:.2f} s, min Hamming {ours} (random draw: {rand})")
    assert ours > rand
    assert seconds < 60, "the greedy search must take seconds, not minutes"


def test_maxavg_beats_random_mean():
    perms = jigsaw_permutations(100, 9, "maxavg", seed=1, cache=False)
    _assert_valid(perms, 100, 9)
    ours, rand = mean_hamming_distance(perms), mean_hamming_distance(_random_perms(100, 9, 1))
    print(f"k=100 maxavg: mean Hamming {ours:.3f} (random draw: {rand:.3f})")
    assert ours > rand


def test_seed_determinism():
    a = jigsaw_permutations(50, 8, seed=7, cache=False)
    assert torch.equal(a, jigsaw_permutations(50, 8, seed=7, cache=False))
    assert not torch.equal(a, jigsaw_permutations(50, 8, seed=8, cache=False))


def test_all_permutations_when_k_is_n_factorial():
    perms = jigsaw_permutations(math.factorial(4), 4, cache=False)
    _assert_valid(perms, 24, 4)


def test_disk_cache(fastssl_cache):
    cache_root, _ = fastssl_cache
    a = jigsaw_permutations(20, 6, "maxmin", seed=2)
    files = list((cache_root / "perms").glob("*.npy"))
    assert [f.name for f in files] == ["perms_n6_k20_maxmin_seed2.npy"]
    assert not list((cache_root / "perms").glob("*.tmp")), "temp file left behind"
    files[0].write_bytes(files[0].read_bytes())  # still readable as written
    assert torch.equal(a, jigsaw_permutations(20, 6, "maxmin", seed=2))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(k=0), "k must be"),
        (dict(k=25, n_tiles=4), "k must be"),
        (dict(k=3, n_tiles=1), "n_tiles must be"),
        (dict(k=3, n_tiles=11), "n_tiles must be"),
        (dict(k=3, method="maxmax"), "method must be"),
        (dict(k=2.5), "k must be"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jigsaw_permutations(**kwargs, cache=False)


def _op_args(n=5, k=6, use_min=True, device="cpu"):
    cand = all_permutations(n).to(device)
    prio = torch.randperm(cand.shape[0], generator=torch.Generator().manual_seed(0)).to(device)
    return cand, prio, k, use_min


def test_op_registration_opcheck():
    torch.library.opcheck(hamming_greedy_op().default, _op_args())


def test_op_rejects_bad_priority():
    cand, prio, k, use_min = _op_args()
    hamming_greedy_op()
    with pytest.raises(RuntimeError, match="permutation of 0..M-1"):
        torch.ops.fastssl.hamming_greedy(cand, torch.zeros_like(prio), k, use_min)
    with pytest.raises(RuntimeError, match="uint8"):
        torch.ops.fastssl.hamming_greedy(cand.long(), prio, k, use_min)
    with pytest.raises(RuntimeError, match="must be < 16"):
        torch.ops.fastssl.hamming_greedy(cand + 16, prio, k, use_min)


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["maxmin", "maxavg"])
def test_cuda_kernel_matches_cpu(method):
    for n, k in [(5, 30), (9, 200)]:
        cpu = jigsaw_permutations(k, n, method, seed=4, cache=False)
        gpu = jigsaw_permutations(k, n, method, seed=4, device="cuda", cache=False)
        assert torch.equal(cpu, gpu)
