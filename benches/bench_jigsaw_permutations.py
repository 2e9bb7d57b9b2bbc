"""jigsaw_permutations: the C++ greedy search against the same algorithm in plain PyTorch (the
ref, i.e. what a user would write with torch ops), same (k, n, method, seed), same run."""

import harness
import pytest
import torch

from fastssl.ops import jigsaw_permutations, jigsaw_permutations_ref


@pytest.mark.parametrize("k", [300])
def test_bench_jigsaw_permutations_cpu(benchmark, k):
    fn = lambda: jigsaw_permutations(k, 9, "maxmin", seed=0, cache=False)  # noqa: E731
    ref = lambda: jigsaw_permutations_ref(k, 9, "maxmin", seed=0)  # noqa: E731
    assert torch.equal(fn(), ref())
    res = harness.compare(benchmark, "jigsaw_permutations", f"k={k},n=9,maxmin", fn, {"torch_ref": ref},
                          device="cpu", rounds=3)
    print(f"jigsaw_permutations k={k}: {res['ms']:.0f} ms, torch ref {res['torch_ref']['ms']:.0f} ms "
          f"({res['torch_ref']['ratio']:.1f}x)")
