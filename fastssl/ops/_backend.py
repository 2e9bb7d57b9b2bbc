"""Which implementation of an op runs: dispatch by the input's device, overridable for tests.

``FASTSSL_BACKEND=ref|triton|native`` forces one back end for every op:
- ``ref``: the plain PyTorch reference (``X_ref``), the spec;
- ``triton``: the Triton kernel (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``);
- ``native``: the C++ kernel or the blockwise PyTorch path (the default for CPU tensors).
Default: CUDA tensors -> ``triton`` (or the op's CUDA C++ kernel), CPU tensors -> ``native``.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("ref", "triton", "native")


def forced_backend() -> str | None:
    forced = os.environ.get("FASTSSL_BACKEND", "").strip().lower() or None
    if forced is not None and forced not in BACKENDS:
        raise ValueError(f"FASTSSL_BACKEND must be one of {BACKENDS}, got {forced!r}")
    return forced


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def choose_backend(x: torch.Tensor, supported: tuple[str, ...] = BACKENDS) -> str:
    """The back end for an op whose main input is ``x``; ``supported`` lists what the op has."""
    backend = forced_backend()
    if backend is None:
        backend = "triton" if (x.is_cuda and "triton" in supported) else "native"
    if backend not in supported:
        raise ValueError(f"this op has no {backend!r} back end (it has {supported})")
    if backend == "triton" and not x.is_cuda and not triton_interpreting():
        raise ValueError(
            "FASTSSL_BACKEND=triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
        )
    return backend
