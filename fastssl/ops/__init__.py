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
