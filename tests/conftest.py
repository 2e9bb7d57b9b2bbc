"""Test harness: Triton interpreter switch, devices, seeds. Helpers live in tests/helpers.py."""

import os

# Triton kernels run on the CPU through the numpy interpreter; it must be switched on before triton
# is imported anywhere. benches/gpu_check.sh sets TRITON_INTERPRET=0 to run them compiled on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda])]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (runs in benches/gpu_check.sh)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything(request):
    """Each test starts from a seed derived from its own name: reproducible, independent of order."""
    seed = sum(map(ord, request.node.nodeid)) % (2**31)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds code that still uses the legacy global RNG)
    torch.manual_seed(seed)
    yield


@pytest.fixture(params=DEVICES)
def device(request):
    """cpu always; cuda only where a GPU is present."""
    return torch.device(request.param)


@pytest.fixture
def fastssl_cache(tmp_path, monkeypatch):
    """A private FASTSSL_CACHE for tests that write caches (the built extension stays shared)."""
    from fastssl.base.cache import cache_dir
    from fastssl.ops import _ext

    _ext.load()  # built (or found) in the real cache first: a private cache must not mean a second build
    ext_dir = cache_dir()
    monkeypatch.setenv("FASTSSL_CACHE", str(tmp_path / "cache"))  # cache_dir() reads it at every call
    yield tmp_path / "cache", ext_dir
