"""Jigsaw permutation sets (Noroozi & Favaro 2016): k permutations of n tiles chosen greedily, out of
all n! candidates, for maximal minimum (``maxmin``) or mean (``maxavg``) Hamming distance to those
already chosen. The greedy loop runs in C++ (``torch.ops.fastssl.hamming_greedy``, CPU and CUDA);
``jigsaw_permutations_ref`` is the same algorithm in plain PyTorch.

Determinism: the first permutation and every tie are decided by a priority order drawn from
``torch.Generator().manual_seed(seed)``, so the same (k, n, method, seed) gives the same set on any
device and thread count. Results are cached on disk under ``$FASTSSL_CACHE/perms`` (atomic write).

The op ``torch.ops.fastssl.hamming_greedy(candidates uint8 [M, n], priority int64 [M], k, use_min) -> int64
[k]`` checks its inputs without a host sync: on the CPU, on the host (a ``RuntimeError`` if ``priority`` is
not a permutation of ``0..M-1`` or a candidate value is >= 16); on CUDA, a CPU ``priority`` (what
:func:`jigsaw_permutations` passes) is checked on the host the same way before any launch, while a
``priority`` already on the device and the candidates are checked by kernels that run first: bad input
there gives a result of all -1 (no assert, the CUDA context survives), which :func:`jigsaw_permutations`
turns into a ``RuntimeError``.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from fastssl.base.atomic import atomic_path
from fastssl.ops._backend import forced_backend

METHODS = ("maxmin", "maxavg")
# What runs where (shown by `python -m fastssl.info`).
BACKENDS = {"jigsaw_permutations": {"cpu": "native: C++ kernel (at::parallel_reduce)",
                                    "cuda": "native: CUDA kernel"}}
MAX_TILES = 10  # 10! = 3.6M candidates (36 MB); 11! would be 440 MB


def _check(k: int, n_tiles: int, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(n_tiles, int) or not 2 <= n_tiles <= MAX_TILES:
        raise ValueError(f"n_tiles must be an int in [2, {MAX_TILES}], got {n_tiles!r}")
    if not isinstance(k, int) or not 1 <= k <= math.factorial(n_tiles):
        raise ValueError(f"k must be an int in [1, {n_tiles}! = {math.factorial(n_tiles)}], got {k!r}")


@lru_cache(maxsize=4)
def all_permutations(n_tiles: int) -> torch.Tensor:
    """uint8 [n!, n], every permutation of range(n) in lexicographic order (cached: treat as read-only)."""
    return torch.from_numpy(np.array(list(itertools.permutations(range(n_tiles))), dtype=np.uint8))


def _priority(m: int, seed: int) -> torch.Tensor:
    return torch.randperm(m, generator=torch.Generator().manual_seed(seed))


def jigsaw_permutations_ref(k: int, n_tiles: int = 9, method: str = "maxmin", seed: int = 0) -> torch.Tensor:
    """Plain PyTorch spec of :func:`jigsaw_permutations` (same picks; slow for k=1000)."""
    _check(k, n_tiles, method)
    cand = all_permutations(n_tiles)
    prio = _priority(cand.shape[0], seed)
    use_min = method == "maxmin"
    score = torch.full((cand.shape[0],), n_tiles + 1 if use_min else 0, dtype=torch.int64)
    taken = torch.zeros(cand.shape[0], dtype=torch.bool)
    picked = [int(prio.argmax())]
    for _ in range(1, k):
        taken[picked[-1]] = True
        d = (cand != cand[picked[-1]]).sum(1)
        score = torch.minimum(score, d) if use_min else score + d
        key = torch.where(taken, -1, score * (1 << 22) + prio)
        picked.append(int(key.argmax()))
    return cand[torch.tensor(picked)].long()


def _cache_path(k: int, n_tiles: int, method: str, seed: int) -> Path:
    from fastssl.base.cache import cache_dir

    return cache_dir() / "perms" / f"perms_n{n_tiles}_k{k}_{method}_seed{seed}.npy"


def jigsaw_permutations(
    k: int,
    n_tiles: int = 9,
    method: str = "maxmin",
    seed: int = 0,
    device: torch.device | str | None = None,
    cache: bool = True,
) -> torch.Tensor:
    """k permutations of ``n_tiles`` tiles with maximal minimum/mean pairwise Hamming distance.

    Args:
        k: how many permutations (1 <= k <= n_tiles!); Noroozi & Favaro use 100 or 1000.
        n_tiles: tiles per puzzle (9 for a 3x3 grid), 2..10.
        method: ``"maxmin"`` (maximise the minimum distance) or ``"maxavg"`` (the mean).
        seed: decides the first permutation and all ties.
        device: where the greedy search runs (CPU C++ kernel by default, or a CUDA kernel); the
            result is always returned on the CPU.
        cache: read/write the on-disk cache.

    Returns:
        int64 tensor [k, n_tiles] on the CPU, each row a permutation of ``range(n_tiles)``, all rows
        distinct. k=1000 for 9 tiles takes a few seconds on 2 CPU cores.
    """
    _check(k, n_tiles, method)
    path = _cache_path(k, n_tiles, method, seed)
    if cache and path.is_file():
        return torch.from_numpy(np.load(path)).long()
    if forced_backend() == "ref":
        perms = jigsaw_permutations_ref(k, n_tiles, method, seed)
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        cand = all_permutations(n_tiles)
        # priority stays on the CPU: the op checks it on the host (on CUDA too) and copies it itself.
        prio = _priority(cand.shape[0], seed)
        idx = hamming_greedy_op()(cand.to(dev), prio, k, method == "maxmin").cpu()
        if bool((idx < 0).any()):  # the CUDA kernels' answer to input they refused (module doc)
            raise RuntimeError("hamming_greedy: the device kernels refused their input (a priority that is not a "
                               "permutation of 0..M-1, or a candidate value >= 16)")
        perms = cand[idx].long()
    if cache:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a reader sees the old file or the whole new one
            np.save(f, perms.numpy())
    return perms


def min_hamming_distance(perms: torch.Tensor) -> int:
    """Smallest Hamming distance between two distinct rows of ``perms`` [k, n] (k >= 2)."""
    if perms.shape[0] < 2:
        raise ValueError("need at least 2 permutations")
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def mean_hamming_distance(perms: torch.Tensor) -> float:
    """Mean Hamming distance over pairs of distinct rows of ``perms`` [k, n]."""
    k = perms.shape[0]
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1).double()
    return float(d.sum() / (k * (k - 1)))


@lru_cache(maxsize=1)
def hamming_greedy_op():
    """torch.ops.fastssl.hamming_greedy, with the extension loaded and its fake kernel registered
    (the op only exists once the library is loaded, so registration cannot happen at import)."""
    from fastssl.ops._ext import load

    load()

    @torch.library.register_fake("fastssl::hamming_greedy")
    def _fake(candidates, priority, k, use_min):
        return candidates.new_empty((k,), dtype=torch.int64)

    return torch.ops.fastssl.hamming_greedy
