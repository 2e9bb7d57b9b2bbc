"""Jigsaw and context tiles cut from a batch of images on its own device (C++ / CUDA op).

One kernel family for the two tile pretext tasks:

- **jigsaw** (Noroozi & Favaro 2016, sec. 3): images ``(B, C, S, S)`` with ``S = grid x cell`` (255 = 3 x 85
  on ImageNet; 64 px demo: cells of 21/21/22) -> ``tiles (B, grid², C, t, t)``, one ``t x t`` tile per grid
  cell at a random offset inside its cell (the gap / jitter that hides edge continuity), output position
  ``p`` showing grid cell ``perms[label, p]``; ``label (B,)`` is the permutation index, drawn uniformly
  from the ``K x grid²`` table (``fastssl.ops.jigsaw_permutations``). ``tiles[:, perms[label].argsort()]``
  puts the tiles back in grid (row-major) order.
- **context** (Doersch et al. 2015, sec. 3): ``tiles (B, 2, C, t, t)`` = the centre tile and one of its 8
  neighbours, each jittered inside its cell, ``label`` in 0..7 = the neighbour's position in row-major
  order with the centre skipped (0 1 2 / 3 . 4 / 5 6 7).

Options (the shortcut guards of both papers): ``normalize`` (each tile's own per-channel mean / std,
Noroozi sec. 3.2), ``gray_p`` (per-sample grayscale, luma 0.299 R + 0.587 G + 0.114 B of the input's
values), ``drop_p`` (per-sample colour dropping, Doersch sec. 4: every channel but one random kept channel
is zeroed and stays 0 after normalization). Input uint8 (scaled to [0, 1], tiles float32) or float
(float16/bfloat16/float32/float64; tiles in the same dtype, statistics in float32, float64 for float64),
``(B, C, H, W)`` or, with ``channels_last=True``, ``(B, H, W, C)``; any strides (no copy of the images).
H and W may differ; each must be at least ``grid * tile``.

Randomness: Philox4x32-10 (``at::Philox4_32``) keyed by a 64-bit seed drawn from ``generator`` (the
default CPU generator if None), subsequence = sample index, so the same seed gives the same draws, bit for
bit, on the CPU and on CUDA and for any thread count. Or pass ``draws`` (the int64 ``[B, 3 + 2 x slots]``
layout below) to cut exactly those tiles: that is how the tests compare the kernels with
:func:`sample_tiles_ref`. Every call returns the draws it used.

Draw row of a sample: ``[label, gray 0/1, kept channel (-1 = no dropping), dy_0, dx_0, dy_1, dx_1, ...]``
with one (dy, dx) jitter per slot; slots are the grid cells in row-major order (jigsaw) or [centre,
neighbour] (context); ``0 <= dy <= cell height - t``.

Grayscale is defined for RGB only (the luma weights name R, G and B; there is no gray path for 1, 2 or 4
channels): ``gray_p > 0`` with ``C != 3`` is an error, and so is a given draws row whose gray flag is 1
for ``C != 3`` images. :func:`sample_tiles_ref` raises the same errors.

Errors (``RuntimeError`` from the op, raised before anything is written; :func:`sample_tiles_ref` raises
the same ones for the perms table and the draws): wrong rank or dtype, images too small for the grid and
tile, a permutation table that is not ``[K, grid²]`` int64 or has a row that is not a permutation, draws
of the wrong shape or with an entry out of range (the message names the row, the column and the valid
range), ``grid`` outside 2..4, context with ``grid != 3``, ``gray_p`` / ``drop_p`` outside [0, 1],
``eps <= 0``. Not differentiable (a data transform).

Where the values the kernels index with (labels, gray flag, kept channel, jitter, permutation entries)
are checked:

- CPU images: every perms row and every draws row, on the host, before any write (draws on a private
  copy, so what is checked is what is used).
- CUDA images: ``perms`` and ``draws`` may be CPU tensors; they are then checked on the host the same way
  (on a private pinned copy that is sent to the device without a host sync) and raise the same errors.
  Device-resident ``perms`` / ``draws`` are not read back (that would be a host sync per call and would
  break CUDA-graph capture): each CUDA block checks the draws row and the perms row it uses before it
  reads a pixel, and a sample with an out-of-range row gets NaN tiles: nothing is read or written out of
  bounds and there is no device assert (which would kill the CUDA context). Draws the op makes itself
  (Philox) are always in range, so on the training path only the perms table is checked this way; pass
  CPU ``draws`` / ``perms`` to get the clear error on CUDA too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch

from fastssl.ops._backend import forced_backend

TASKS = {"jigsaw": 0, "context": 1}
HEADER = 3  # label, gray flag, kept channel
BACKENDS = {"sample_tiles": {"cpu": "native: C++ kernel (at::parallel_for over tiles)",
                             "cuda": "native: CUDA kernel (one block per tile, Philox draws on the device)"}}
LUMA = (0.299, 0.587, 0.114)


class Tiles(NamedTuple):
    tiles: torch.Tensor  # (B, n, C, t, t)
    labels: torch.Tensor  # (B,) int64
    draws: torch.Tensor  # (B, 3 + 2 * slots) int64


def n_slots(task: str, grid: int = 3) -> int:
    return grid * grid if task == "jigsaw" else 2


def n_draws(task: str, grid: int = 3) -> int:
    """Length of one sample's draw row."""
    return HEADER + 2 * n_slots(task, grid)


def cell_bounds(side: int, grid: int) -> list[int]:
    """Grid line positions of a side: 64 px, 3 cells -> [0, 21, 42, 64]."""
    return [i * side // grid for i in range(grid + 1)]


def neighbour_cell(label: int) -> int:
    """Context label 0..7 -> grid cell 0..8 (row-major, centre 4 skipped)."""
    return label if label < 4 else label + 1


def _slot_cell(task: str, grid: int, slot: int, label: int) -> int:
    if task == "jigsaw":
        return slot
    return grid * grid // 2 if slot == 0 else neighbour_cell(label)


def _jitter_range(task: str, grid: int, slot: int, label: int, height: int, width: int, tile: int) -> tuple[int, int]:
    """Jitter of a slot: 0 <= dy < range_y, 0 <= dx < range_x (the cell's sides - tile + 1)."""
    gy, gx = divmod(_slot_cell(task, grid, slot, label), grid)
    ys, xs = cell_bounds(height, grid), cell_bounds(width, grid)
    return ys[gy + 1] - ys[gy] - tile + 1, xs[gx + 1] - xs[gx] - tile + 1


def check_perms(perms: torch.Tensor, grid: int) -> None:
    """RuntimeError (the op's message) unless ``perms`` is an int64 ``[K >= 1, grid²]`` table of permutations."""
    n = grid * grid
    if perms.dim() != 2 or perms.shape[1] != n:
        raise RuntimeError(f"sample_tiles: perms must be [K, {n}] for a {grid}x{grid} grid, got shape "
                           f"{list(perms.shape)}")
    if perms.shape[0] < 1:
        raise RuntimeError(f"sample_tiles: need 1 <= K < 2^31 permutations, got {perms.shape[0]}")
    ok = torch.equal(perms.sort(1).values.long().cpu(), torch.arange(n).expand(perms.shape[0], n))
    if not ok:
        for r, row in enumerate(perms.tolist()):
            if sorted(row) != list(range(n)):
                raise RuntimeError(f"sample_tiles: perms row {r} is not a permutation of 0..{n - 1}")


def check_draws(draws: torch.Tensor, *, task: str, grid: int, tile: int, num_perms: int, channels: int,
                height: int, width: int) -> None:
    """RuntimeError (the op's message: row, column, valid range) unless every draws row is in range for these
    images: what the kernels index with (csrc/sample_tiles.h ``first_bad_draw``)."""
    D = n_draws(task, grid)
    if draws.dtype != torch.int64:
        raise RuntimeError(f"sample_tiles: draws must be int64, got {draws.dtype}")
    if draws.dim() != 2 or draws.shape[1] != D:
        raise RuntimeError(f"sample_tiles: draws must be [B, {D}], got shape {list(draws.shape)}")
    K = num_perms if task == "jigsaw" else 8
    for b, d in enumerate(draws.tolist()):
        bad, rule = None, ""
        if not 0 <= d[0] < K:
            bad, rule = (0, "label"), f"must be in [0, {K})"
        elif d[1] not in (0, 1) or (d[1] == 1 and channels != 3):
            bad, rule = (1, "grayscale flag"), "must be 0 or 1" + (
                "" if channels == 3 else f" and 0 for {channels}-channel images (grayscale needs 3 channels)")
        elif not -1 <= d[2] < channels:
            bad, rule = (2, "kept channel"), f"must be in [-1, {channels})"
        else:
            for s in range(n_slots(task, grid)):
                ry, rx = _jitter_range(task, grid, s, d[0], height, width, tile)
                col = HEADER + 2 * s
                if not 0 <= d[col] < ry:
                    bad, rule = (col, f"dy of slot {s}"), f"must be in [0, {ry})"
                elif not 0 <= d[col + 1] < rx:
                    bad, rule = (col + 1, f"dx of slot {s}"), f"must be in [0, {rx})"
                if bad:
                    break
        if bad:
            col, what = bad
            raise RuntimeError(f"sample_tiles: draws row {b} is out of range: column {col} ({what}) = {d[col]}, "
                               f"{rule}")


def sample_tiles_ref(images: torch.Tensor, draws: torch.Tensor, *, task: str = "jigsaw", tile: int,
                     perms: torch.Tensor | None = None, grid: int = 3, normalize: bool = False,
                     eps: float = 1e-5, channels_last: bool = False) -> torch.Tensor:
    """Plain PyTorch spec of :func:`sample_tiles` for given ``draws``: tiles ``(B, n, C, t, t)``.

    Statistics in float64 for float64 input, float32 otherwise (as the kernels). Raises the op's
    ``RuntimeError`` for a bad perms table or an out-of-range draws row (:func:`check_perms`,
    :func:`check_draws`; grayscale only for 3 channels)."""
    x = images.permute(0, 3, 1, 2) if channels_last else images
    out_dtype = torch.float32 if x.dtype == torch.uint8 else x.dtype
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(acc) / 255 if images.dtype == torch.uint8 else x.to(acc)
    B, C, H, W = x.shape
    if task == "jigsaw":
        check_perms(perms, grid)
    check_draws(draws, task=task, grid=grid, tile=tile, num_perms=perms.shape[0] if task == "jigsaw" else 8,
                channels=C, height=H, width=W)
    ys, xs = cell_bounds(H, grid), cell_bounds(W, grid)
    rows = []
    for b in range(B):
        d = [int(v) for v in draws[b].tolist()]
        label = d[0]
        order = [int(v) for v in perms[label].tolist()] if task == "jigsaw" else [0, 1]
        cut = []
        for slot in order:
            cell = _slot_cell(task, grid, slot, label)
            y0 = ys[cell // grid] + d[HEADER + 2 * slot]
            x0 = xs[cell % grid] + d[HEADER + 2 * slot + 1]
            cut.append(x[b, :, y0:y0 + tile, x0:x0 + tile])
        t = torch.stack(cut)  # (n, C, t, t)
        if d[1]:  # checked above: only with C == 3
            g = LUMA[0] * t[:, 0] + LUMA[1] * t[:, 1] + LUMA[2] * t[:, 2]
            t = g[:, None].expand_as(t)
        if normalize:
            mean = t.mean((2, 3), keepdim=True)
            var = t.var((2, 3), unbiased=False, keepdim=True)
            t = (t - mean) / torch.sqrt(var + eps)
        if d[2] >= 0:
            keep = torch.zeros(C, dtype=torch.bool, device=t.device)
            keep[d[2]] = True
            t = t * keep.view(1, C, 1, 1)
        rows.append(t)
    if not rows:
        return x.new_empty((0, n_slots(task, grid), C, tile, tile), dtype=out_dtype)
    return torch.stack(rows).to(out_dtype)


def random_draws(B: int, *, task: str, grid: int, tile: int, height: int, width: int, channels: int,
                 num_perms: int = 8, gray_p: float = 0.0, drop_p: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws from a torch.Generator (not Philox: the distribution of the kernels' draws, not their bits).
    Used by ``FASTSSL_BACKEND=ref`` and the tests."""
    K = num_perms if task == "jigsaw" else 8
    ys, xs = cell_bounds(height, grid), cell_bounds(width, grid)
    d = torch.empty(B, n_draws(task, grid), dtype=torch.int64)
    u = torch.rand(B, 2, generator=generator, dtype=torch.float64)
    d[:, 0] = torch.randint(0, K, (B,), generator=generator)
    d[:, 1] = (u[:, 0] < gray_p).long()
    keep = torch.randint(0, channels, (B,), generator=generator)
    d[:, 2] = torch.where(u[:, 1] < drop_p, keep, -1)
    for b in range(B):
        for s in range(n_slots(task, grid)):
            cell = _slot_cell(task, grid, s, int(d[b, 0]))
            gy, gx = divmod(cell, grid)
            d[b, HEADER + 2 * s] = int(torch.randint(0, ys[gy + 1] - ys[gy] - tile + 1, (), generator=generator))
            d[b, HEADER + 2 * s + 1] = int(torch.randint(0, xs[gx + 1] - xs[gx] - tile + 1, (), generator=generator))
    return d


def sample_tiles(images: torch.Tensor, task: str = "jigsaw", *, tile: int, perms: torch.Tensor | None = None,
                 grid: int = 3, normalize: bool = False, gray_p: float = 0.0, drop_p: float = 0.0,
                 eps: float = 1e-5, channels_last: bool = False, generator: torch.Generator | None = None,
                 draws: torch.Tensor | None = None) -> Tiles:
    """Cut jigsaw or context tiles from ``images`` (see the module doc): ``Tiles(tiles, labels, draws)``.

    Args:
        images: uint8 or float ``(B, C, H, W)`` (``(B, H, W, C)`` with ``channels_last``), CPU or CUDA.
        task: ``"jigsaw"`` or ``"context"``.
        tile: tile side t in pixels (<= min(H, W) // grid).
        perms: int64 ``(K, grid²)`` permutation table (jigsaw), on the images' device or on the CPU (then
            checked on the host even for CUDA images; module doc, "Where ... are checked").
        grid: cells per side (2..4; context needs 3).
        normalize, gray_p, drop_p, eps: the guards (module doc); ``var + eps`` under the square root.
        generator: seeds the Philox stream (one 64-bit draw per call).
        draws: int64 ``(B, 3 + 2 x slots)`` to cut exactly these tiles instead of drawing; on the images'
            device or on the CPU (as perms).

    Returns: tiles ``(B, n, C, t, t)`` (n = grid² or 2), labels int64 ``(B,)``, draws int64 ``(B, D)``, all
    on the images' device.

    Raises: ``ValueError`` for an unknown task or jigsaw without perms; ``RuntimeError`` for the rest (module
    doc, "Errors"; gray for ``C != 3`` included). On CUDA, out-of-range device-resident draws / perms rows
    give NaN tiles instead (no host sync).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if task == "jigsaw" and perms is None:
        raise ValueError("sample_tiles(task='jigsaw') needs perms, e.g. fastssl.ops.jigsaw_permutations(100)")
    if task == "jigsaw" and perms.dtype != torch.int64:
        perms = perms.long()
    if forced_backend() == "ref":
        if draws is None:
            C = images.shape[3 if channels_last else 1]
            if gray_p > 0 and C != 3:  # the op's check (random_draws would set gray flags check_draws refuses)
                raise RuntimeError(f"sample_tiles: grayscale (gray_p > 0) needs 3 channels, got {C}")
            H, W = (images.shape[1:3] if channels_last else images.shape[2:4])
            draws = random_draws(images.shape[0], task=task, grid=grid, tile=tile, height=H, width=W, channels=C,
                                 num_perms=perms.shape[0] if perms is not None else 8, gray_p=gray_p,
                                 drop_p=drop_p, generator=generator).to(images.device)
        tiles = sample_tiles_ref(images, draws, task=task, tile=tile, perms=perms, grid=grid, normalize=normalize,
                                 eps=eps, channels_last=channels_last)
        return Tiles(tiles, draws[:, 0], draws)
    seed = 0
    if draws is None:
        seed = int(torch.randint(-(2**63), 2**63 - 1, (), generator=generator, dtype=torch.int64))
    op = _OP or sample_tiles_op()  # a global once loaded, so torch.compile traces no extension loading
    tiles, used = op(images, perms if task == "jigsaw" else None, draws, TASKS[task], grid, tile,
                                    seed, channels_last, normalize, float(gray_p), float(drop_p), float(eps))
    return Tiles(tiles, used[:, 0], used)


_OP = None


@lru_cache(maxsize=1)
def sample_tiles_op():
    """torch.ops.fastssl.sample_tiles with the extension loaded and its fake kernel registered (call it, or
    sample_tiles, once eagerly before torch.compile traces a call)."""
    global _OP
    from fastssl.ops._ext import load

    load()

    @torch.library.register_fake("fastssl::sample_tiles")
    def _fake(images, perms, draws, mode, grid, tile, seed, channels_last, normalize, gray_p, drop_p, eps):
        torch._check(images.dim() == 4, lambda: f"sample_tiles: images must be 4-D, got {images.dim()}-D")
        torch._check(mode in (0, 1), lambda: f"sample_tiles: mode must be 0 or 1, got {mode}")
        B = images.shape[0]
        C = images.shape[3] if channels_last else images.shape[1]
        n_out = grid * grid if mode == 0 else 2
        dtype = torch.float32 if images.dtype == torch.uint8 else images.dtype
        tiles = images.new_empty((B, n_out, C, tile, tile), dtype=dtype)
        return tiles, images.new_empty((B, 3 + 2 * n_out), dtype=torch.int64)

    _OP = torch.ops.fastssl.sample_tiles
    return _OP
