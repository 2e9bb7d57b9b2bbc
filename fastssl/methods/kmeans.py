"""k-means on the device (Lloyd's algorithm with k-means++ seeding), for the BoW vocabulary."""

from __future__ import annotations

import warnings

import torch

from fastssl.base.progress import Progress


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): ``x [N, D]`` -> ``k`` rows of x ``[k, D]``; each new
    centre drawn with probability proportional to the squared distance to the nearest chosen one."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=generator.device).to(x.device)
    centres = [x[first[0]]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        # normalized in float64: a float32 sum of N squared distances can overflow to inf (p would be all 0)
        p = d2.double().clamp_min(0)
        total = p.sum()
        p = p / total if 0 < total < float("inf") else torch.full_like(p, 1.0 / n)  # all points on a centre: uniform
        i = torch.multinomial(p.to(generator.device), 1, generator=generator).to(x.device)[0]
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def assign(x: torch.Tensor, centres: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index ``[N]`` (int64) of the nearest centre of each row of ``x`` (squared Euclidean; ties: lowest)."""
    out = []
    for s in range(0, x.shape[0], chunk):
        out.append(torch.cdist(x[s:s + chunk], centres, compute_mode="donot_use_mm_for_euclid_dist").argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def lloyd(x: torch.Tensor, centres: torch.Tensor, iters: int, progress: bool = False) -> torch.Tensor:
    """``iters`` Lloyd steps from ``centres [k, D]``: assign, then each centre becomes the mean of its rows
    (an empty cluster keeps its centre). Stops early when no assignment changes. Returns ``[k, D]``."""
    k = centres.shape[0]
    bar = Progress(iters, x.shape[0], enabled=progress)
    prev = None
    for it in range(iters):
        idx = assign(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        bar.update(it + 1, prefix="k-means ", force=it + 1 == iters)
        if prev is not None and torch.equal(idx, prev):
            break
        prev = idx
    bar.close()
    return centres


def kmeans(x: torch.Tensor, k: int, iters: int = 30, seed: int = 0, progress: bool = False,
           what: str = "the data", k_name: str = "k") -> torch.Tensor:
    """Cluster ``x [N, D]`` (float, any device) into ``k`` centres ``[k, D]`` (k-means++ seeding from a
    ``torch.Generator`` seeded with ``seed`` on the CPU, then Lloyd). Deterministic for a given seed on a
    given device. Raises ValueError if k < 2 or k > N.

    Warns (``UserWarning``, naming ``what`` was clustered and the flag ``k_name`` that set k) when fewer than
    ``k`` of the centres are distinct:
    with fewer than ``k`` distinct points k-means++ has to repeat some, and a repeated centre is never the
    nearest one (ties go to the lowest index), so it is a cluster nothing is ever assigned to (for bow, a
    word no histogram can contain)."""
    if k < 2:
        raise ValueError(f"k-means needs k >= 2, got {k}")
    if x.dim() != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs [N, D] with N >= k={k}, got {tuple(x.shape)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.float()
    centres = lloyd(x, kmeans_pp_init(x, k, gen), iters, progress)
    distinct = torch.unique(centres, dim=0).shape[0]
    if distinct < k:
        points = torch.unique(x, dim=0).shape[0]
        warnings.warn(f"k-means of {what}: only {distinct} of the {k} centres ({k_name} {k}) are distinct "
                      f"({x.shape[0]} points, {points} distinct): {k - distinct} centre(s) repeat another and can "
                      f"never be assigned; use {k_name} <= {distinct} or more varied data", stacklevel=2)
    return centres
