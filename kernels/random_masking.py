"""Triton device code for MAE random masking (launcher and checks: fastssl/ops/random_masking.py).

One program per sample. Each patch l of sample b gets a 32-bit Philox draw r = randint(seed, b*L + l)
(Triton's ``tl.randint``: Philox4x32-10, key = seed split in two 32-bit halves, counter = (offset, 0,
0, 0)); its sort key is (r << 20) | l, unique per row. A patch is kept when fewer than L_keep keys of
its row are smaller (its rank, counted in chunks of keys, O(L^2) compares per row: L is at most a few
hundred and the kernel is bound by its launch, not by compares). Kept positions are written in
ascending order (a cumulative sum gives each its slot), so ids_keep is sorted; ids_restore maps each
position to its slot in [kept | masked] (both parts ascending).

The seed is a scalar kernel argument (the launcher draws it on the host): no device read, no host
sync, nothing to copy before the launch. Offsets are 32-bit: the launcher checks B*L < 2**31.
"""

import triton
import triton.language as tl

_INDEX_BITS = tl.constexpr(20)  # the key's low bits hold the position l (L < 2**20)
_PAD_KEY = tl.constexpr(1 << 62)  # larger than every real key (< 2**52): padding lanes rank last


@triton.jit
def _keys(seed, b, L, cols, INDEX_BITS: tl.constexpr):
    """Sort keys of positions ``cols`` of sample ``b``: (philox uint32 << INDEX_BITS) | l; padding big."""
    r = tl.randint(seed, b * L + cols).to(tl.int64) & 0xFFFFFFFF
    key = (r << INDEX_BITS) | cols.to(tl.int64)
    return tl.where(cols < L, key, _PAD_KEY)


# the seed is not specialized (a seed divisible by 16 or equal to 1 would compile another variant)
@triton.jit(do_not_specialize=["seed"])
def _random_masking_kernel(
    seed,  # int: Philox key in [0, 2**62), drawn by the launcher from a torch.Generator
    IDS_KEEP,  # *int64 [B, L_KEEP] out: kept positions, ascending
    IDS_RESTORE,  # *int64 [B, L] out: slot of each position in [kept | masked]
    MASK,  # *fp32 [B, L] out: 1 = removed, 0 = kept
    L,  # patches per sample
    L_KEEP,  # kept patches per sample (>= 1)
    BLOCK_L: tl.constexpr,  # next power of two >= L (a whole row per program)
    CHUNK: tl.constexpr,  # keys compared per step of the rank count (bounds registers: BLOCK_L * CHUNK)
):
    b = tl.program_id(0)
    cols = tl.arange(0, BLOCK_L)
    valid = cols < L
    key = _keys(seed, b, L, cols, _INDEX_BITS)
    rank = tl.zeros([BLOCK_L], tl.int32)
    for j0 in range(0, L, CHUNK):  # rank[l] = #{j : key_j < key_l}, keys of the chunk regenerated
        jcols = j0 + tl.arange(0, CHUNK)
        kj = _keys(seed, b, L, jcols, _INDEX_BITS)
        rank += tl.sum((kj[None, :] < key[:, None]).to(tl.int32), axis=1)
    kept = (rank < L_KEEP) & valid
    kept_i = kept.to(tl.int32)
    kept_upto = tl.cumsum(kept_i, axis=0)  # kept positions <= l
    slot = tl.where(kept, kept_upto - 1, L_KEEP + cols - kept_upto)
    tl.store(IDS_RESTORE + b * L + cols, slot.to(tl.int64), mask=valid)
    tl.store(MASK + b * L + cols, 1.0 - kept_i.to(tl.float32), mask=valid)
    tl.store(IDS_KEEP + b * L_KEEP + (kept_upto - 1), cols.to(tl.int64), mask=kept)
