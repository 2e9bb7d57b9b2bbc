"""MAE random masking: which patches each sample keeps, from a counter-based RNG.

``random_masking(batch, num_patches, mask_ratio, generator=None, device=None)`` ->
``(ids_keep, ids_restore, mask)``:
- ``ids_keep`` int64 [B, L_keep]: the kept patch positions of each sample, **sorted ascending**
  (raster order: the masked patch embedding then reads the image front to back). The original code's
  ids_keep is in random (noise) order; the encoder is permutation-equivariant given the position
  embeddings, so the order changes nothing but memory access;
- ``ids_restore`` int64 [B, L]: the slot of each position in [kept tokens | masked tokens] (kept part
  ascending, masked part ascending), as the original code's ``ids_restore`` maps positions into its
  [kept | masked] concatenation: ``cat([x_kept, mask_tokens]).gather(1, ids_restore)`` restores order;
- ``mask`` float32 [B, L]: 1 = removed (masked), 0 = kept.

L_keep = L - round(L * mask_ratio), at least 1 (the original ``int(L * (1 - mask_ratio))`` loses a
token to floating point: L=100, ratio 0.9 -> 9 instead of 10; L=10, ratio 0.9 -> 0). Python's round
(half to even) is used. Every subset of size L_keep is equally likely, independently per sample.

Randomness (Philox4x32-10, counter-based): one 62-bit seed per call is drawn from ``generator`` (a
CPU ``torch.Generator``, or the default CPU generator when None), so a seeded generator reproduces the
masks and every call (step) draws new ones. Patch l of sample b gets the 32-bit draw
philox(seed, counter=b*L + l); its key (draw << 20) | l is unique per row and the L_keep smallest
keys are kept (ties between draws, probability ~L^2/2^33, go to the lower position). The CPU path
computes Philox in int64 torch ops, bit-identical to Triton's ``tl.randint`` (tested), so **CPU and
CUDA give the same masks** for the same seed.

No host sync: the seed stays on the host (an int64 CPU tensor, read there) and reaches the kernel as a
scalar launch argument; nothing is copied to the device before the launch (tested under
``torch.cuda.set_sync_debug_mode("error")``). Under CUDA-graph capture the seed is captured with the
launch: every replay of the graph draws the masks of the captured seed (draw masks outside the
graph, or capture per step, for fresh ones).

Back ends (``fastssl.ops._backend``): CUDA -> the Triton kernel ``fastssl.kernels.random_masking``
(L <= 4096), CPU -> argsort of the keys in torch, ``FASTSSL_BACKEND=ref`` -> :func:`random_masking_ref`
on the same keys (the original algorithm, which returns ids_keep in key order, not sorted). The op is
``torch.ops.fastssl.random_masking(seed, batch, num_patches, len_keep, device=None)`` with ``seed`` a
one-element int64 CPU tensor and the outputs on ``device`` (default cpu) (no gradients: integer
outputs and a 0/1 mask).
"""

from __future__ import annotations

import math

import torch

try:
    import triton
except ImportError:  # pragma: no cover
    triton = None

from fastssl.ops._backend import choose_backend
from fastssl.ops._checks import launch

MAX_TRITON_L = 4096  # the Triton kernel keeps a whole row in registers
INDEX_BITS = 20  # key = (draw << 20) | l: L < 2**20
_M32 = 0xFFFFFFFF
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
BACKENDS = {"random_masking": {"cpu": "native: Philox in torch + argsort",
                               "cuda": f"triton: one program per sample (L <= {MAX_TRITON_L})"}}


def num_keep(num_patches: int, mask_ratio: float) -> int:
    """L_keep = L - round(L * mask_ratio), at least 1."""
    return max(1, num_patches - round(num_patches * mask_ratio))


def check_mask_ratio(mask_ratio) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)):
        raise ValueError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}")
    if not (math.isfinite(mask_ratio) and 0 <= mask_ratio < 1):
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return float(mask_ratio)


def philox_uint32(seed, offsets: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.randint(seed, offsets)`` in int64 torch ops: Philox4x32-10 with key (seed low,
    seed high 32 bits) and counter (offset, 0, 0, 0); returns the first output word, int64 in [0, 2^32).
    ``seed``: a Python int or an int64 CPU tensor (read on the host), in [0, 2**62). Products of two
    32-bit words wrap in int64 with the same low 64 bits as the unsigned product."""
    c0 = offsets.to(torch.int64) & _M32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    seed = int(seed)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        p0, p2 = c0 * _PHILOX_ROUND_A, c2 * _PHILOX_ROUND_B
        c0, c2 = ((p2 >> 32) & _M32) ^ c1 ^ k0, ((p0 >> 32) & _M32) ^ c3 ^ k1
        c1, c3 = p2 & _M32, p0 & _M32
        k0, k1 = (k0 + _PHILOX_KEY_A) & _M32, (k1 + _PHILOX_KEY_B) & _M32
    return c0


def masking_keys(seed, batch: int, num_patches: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The per-patch sort keys int64 [B, L] (the "noise" of the original code, as integers) on ``device``
    (default: the CPU). ``seed``: a Python int or an int64 CPU tensor."""
    pos = torch.arange(num_patches, device=device)
    offs = torch.arange(batch, device=device)[:, None] * num_patches + pos
    return (philox_uint32(seed, offs) << INDEX_BITS) | pos


def random_masking_ref(noise: torch.Tensor, len_keep: int):
    """The original MAE ``random_masking`` (facebookresearch/mae, models_mae.py) on given noise [B, L]:
    argsort the noise, keep the first len_keep, ``ids_restore`` = argsort of the shuffle, the 0/1
    mask unshuffled. Returns (ids_keep in noise order, ids_restore, mask float32)."""
    b, n = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(b, n, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, ids_restore, mask


def _native(seed: int, batch, num_patches, len_keep, device):
    keys = masking_keys(seed, batch, num_patches, device)
    order = keys.argsort(dim=1)
    ids_keep = order[:, :len_keep].sort(dim=1).values
    kept = torch.zeros(batch, num_patches, dtype=torch.bool, device=device).scatter_(1, ids_keep, True)
    kept_upto = kept.cumsum(1)
    pos = torch.arange(num_patches, device=device)
    ids_restore = torch.where(kept, kept_upto - 1, len_keep + pos - kept_upto)
    return ids_keep, ids_restore, (~kept).float()


def triton_config(num_patches: int) -> dict:
    block_l = triton.next_power_of_2(num_patches)
    chunk = max(1, min(block_l, 4096 // block_l))  # <= 4096 compares live at once
    return dict(BLOCK_L=block_l, CHUNK=chunk, num_warps=4)


def masking_plan(seed: int, ids_keep, ids_restore, mask) -> list:
    """The launch: seed a Python int in [0, 2**62) (a scalar kernel argument), outputs contiguous."""
    from fastssl.kernels.random_masking import _random_masking_kernel

    batch, num_patches = mask.shape
    return [(_random_masking_kernel, (batch,), (seed, ids_keep, ids_restore, mask, num_patches, ids_keep.shape[1]),
             triton_config(num_patches))]


@torch.library.custom_op("fastssl::random_masking", mutates_args=())
def _random_masking_op(seed: torch.Tensor, batch: int, num_patches: int, len_keep: int,
                       device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """seed: int64 one-element CPU tensor (read on the host: no device copy, no sync); outputs on
    ``device`` (default: the CPU)."""
    if seed.device.type != "cpu" or seed.dtype != torch.int64 or seed.numel() != 1:
        raise ValueError(f"seed must be a one-element int64 CPU tensor (its value is a kernel argument), got "
                         f"{seed.dtype} {tuple(seed.shape)} on {seed.device}")
    dev = torch.device("cpu") if device is None else device
    s = int(seed)  # a host read of a CPU tensor
    ids_keep = torch.empty(batch, len_keep, dtype=torch.int64, device=dev)
    backend = choose_backend(ids_keep, ("ref", "triton", "native"))
    if backend == "triton" and num_patches <= MAX_TRITON_L:
        ids_restore = torch.empty(batch, num_patches, dtype=torch.int64, device=dev)
        mask = torch.empty(batch, num_patches, dtype=torch.float32, device=dev)
        launch(masking_plan(s, ids_keep, ids_restore, mask), ids_keep)
        return ids_keep, ids_restore, mask
    if backend == "ref":
        ids_keep, ids_restore, mask = random_masking_ref(masking_keys(s, batch, num_patches, dev), len_keep)
        return ids_keep.clone(), ids_restore, mask
    return _native(s, batch, num_patches, len_keep, dev)


@_random_masking_op.register_fake
def _(seed, batch, num_patches, len_keep, device=None):
    dev = torch.device("cpu") if device is None else device
    return (torch.empty(batch, len_keep, dtype=torch.int64, device=dev),
            torch.empty(batch, num_patches, dtype=torch.int64, device=dev),
            torch.empty(batch, num_patches, dtype=torch.float32, device=dev))


def draw_seed(generator: torch.Generator | None = None) -> torch.Tensor:
    """One 62-bit Philox seed (int64 0-d CPU tensor) from ``generator`` (default: the global CPU RNG)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (the seed is drawn on the host), "
                         f"got one on {generator.device}")
    return torch.randint(0, 2**62, (), generator=generator, dtype=torch.int64)


def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None):
    """MAE's per-sample random masking -> (ids_keep [B, L_keep], ids_restore [B, L], mask [B, L]).

    Args: ``batch`` B >= 1, ``num_patches`` L in [1, 2**20) with B*L < 2**31, ``mask_ratio`` in [0, 1),
    ``generator`` a CPU torch.Generator (None: the global one), ``device`` of the outputs (default cpu).
    See the module docstring for the order of ids_keep (ascending), L_keep and the RNG. Raises
    ValueError for bad arguments.
    """
    for name, v in (("batch", batch), ("num_patches", num_patches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if num_patches >= 1 << INDEX_BITS or batch * num_patches >= 2**31:
        raise ValueError(f"batch * num_patches must be < 2**31 and num_patches < 2**{INDEX_BITS}, got "
                         f"{batch} x {num_patches}")
    ratio = check_mask_ratio(mask_ratio)
    dev = torch.device("cpu") if device is None else torch.device(device)
    return torch.ops.fastssl.random_masking(draw_seed(generator), batch, num_patches, num_keep(num_patches, ratio), dev)
