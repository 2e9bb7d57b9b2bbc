"""Public fused ops. Each has a plain-PyTorch ``*_ref`` beside it (the spec the tests compare to)."""

from fastssl.ops.jigsaw_permutations import (
    jigsaw_permutations,
    jigsaw_permutations_ref,
    mean_hamming_distance,
    min_hamming_distance,
)

__all__ = [
    "jigsaw_permutations",
    "jigsaw_permutations_ref",
    "mean_hamming_distance",
    "min_hamming_distance",
]
