"""Public fused ops. Each has a plain-PyTorch ``*_ref`` beside it (the spec the tests compare to)."""

from fastssl.ops.jigsaw_permutations import (
    jigsaw_permutations,
    jigsaw_permutations_ref,
    mean_hamming_distance,
    min_hamming_distance,
)
from fastssl.ops.nt_xent import NTXentLoss, info_nce, info_nce_ref, nt_xent, nt_xent_ref
from fastssl.ops.sample_tiles import Tiles, sample_tiles, sample_tiles_ref

__all__ = [
    "jigsaw_permutations",
    "jigsaw_permutations_ref",
    "mean_hamming_distance",
    "min_hamming_distance",
    "NTXentLoss",
    "info_nce",
    "info_nce_ref",
    "nt_xent",
    "nt_xent_ref",
    "Tiles", "sample_tiles", "sample_tiles_ref",
]

# MAE token ops (masking, masked-only patch embedding, unshuffle, masked-patch loss)
from fastssl.ops.masked_patch_embed import masked_patch_embed, masked_patch_embed_ref  # noqa: E402
from fastssl.ops.masked_patch_mse import masked_patch_mse, masked_patch_mse_ref, patchify, unpatchify  # noqa: E402
from fastssl.ops.random_masking import random_masking, random_masking_ref  # noqa: E402
from fastssl.ops.unshuffle import unshuffle, unshuffle_ref  # noqa: E402

__all__ += ["masked_patch_embed", "masked_patch_embed_ref", "masked_patch_mse", "masked_patch_mse_ref", "patchify",
            "unpatchify", "random_masking", "random_masking_ref", "unshuffle", "unshuffle_ref"]
