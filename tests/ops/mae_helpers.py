"""Shared fixtures/helpers of the MAE op tests (backend switch, one intra-op thread)."""

import pytest
import torch

from fastssl.ops._backend import triton_interpreting


def use_backend(monkeypatch, name):
    """Force one back end for the test (FASTSSL_BACKEND); Triton on CPU tensors needs the interpreter."""
    if name == "triton" and not triton_interpreting():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (CUDA runs: the cuda-marked tests)")
    monkeypatch.setenv("FASTSSL_BACKEND", name)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def grads(fn, *xs):
    """(output, grads of a fixed random projection of it) for inputs xs (None for non-float)."""
    xs = [x.detach().clone().requires_grad_() if x.is_floating_point() else x for x in xs]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(out)
    (out * g).sum().backward()
    return out.detach(), [x.grad if x.is_floating_point() else None for x in xs]


def scale(t: torch.Tensor) -> float:
    return max(float(t.detach().double().abs().max()), 1e-12)
