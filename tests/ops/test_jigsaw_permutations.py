"""fastssl.ops.jigsaw_permutations: the C++/CUDA greedy search against its PyTorch spec."""

import math
import re
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


def _bad_priorities(prio):
    """Priorities that are not a permutation of 0..M-1: the kernels index row_of with them."""
    M = prio.numel()
    dup = prio.clone()
    dup[1] = dup[0]
    high, low = prio.clone(), prio.clone()
    high[3], low[3] = M, -1
    return {"zeros": torch.zeros_like(prio), "entry M": high, "entry -1": low, "shifted": prio + 1,
            "duplicate": dup, "2^40": prio + 2**40}


def test_op_refuses_every_non_permutation_priority_on_the_cpu():
    cand, prio, k, use_min = _op_args()
    op = hamming_greedy_op()
    for bad in _bad_priorities(prio).values():
        with pytest.raises(RuntimeError, match=re.escape("priority must be a permutation of 0..M-1 (entry ")):
            op(cand, bad, k, use_min)
    with pytest.raises(RuntimeError, match="must be < 16, got 16"):
        op(cand.clone().index_fill_(0, torch.tensor([7]), 16), prio, k, use_min)


def test_op_reads_no_tensor_values_back_through_aten():
    """No item() / max() in the op (they were a host sync per call on CUDA): the CPU kernel checks its
    inputs from host memory, the CUDA kernels on the device (module doc)."""
    cand, prio, k, use_min = _op_args()
    op = hamming_greedy_op()
    want = op(cand, prio, k, use_min)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = op(cand, prio, k, use_min)
    names = {e.name for e in prof.events()}
    assert "fastssl::hamming_greedy" in names, names
    assert not names & {"aten::item", "aten::_local_scalar_dense", "aten::max"}, names
    assert torch.equal(got, want)


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


@pytest.mark.cuda
def test_cuda_checks_priority_on_the_host_or_the_device_without_killing_the_context():
    cand, prio, k, use_min = _op_args(device="cuda")
    op = hamming_greedy_op()
    want = op(cand.cpu(), prio.cpu(), k, use_min)
    assert torch.equal(op(cand, prio, k, use_min).cpu(), want)  # device priority
    assert torch.equal(op(cand, prio.cpu(), k, use_min).cpu(), want)  # CPU priority, copied by the op
    for name, bad in _bad_priorities(prio.cpu()).items():
        with pytest.raises(RuntimeError, match=re.escape("priority must be a permutation of 0..M-1 (entry ")):
            op(cand, bad, k, use_min)  # CPU priority: checked on the host before any launch
        # Device priority: refused by the check kernel, no assert: a result of all -1.
        assert op(cand, bad.cuda(), k, use_min).cpu().tolist() == [-1] * k, name
    assert op(cand + 16, prio, k, use_min).cpu().tolist() == [-1] * k  # candidates checked on the device
    with pytest.raises(RuntimeError, match="candidates on cpu"):
        op(cand.cpu(), prio, k, use_min)
    torch.cuda.synchronize()
    assert torch.equal(op(cand, prio, k, use_min).cpu(), want)  # the context is alive
