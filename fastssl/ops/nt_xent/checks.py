"""Input checks of nt_xent / info_nce: ValueError with a one-line message naming the argument.

Static: no tensor values are read, except positive_index for CPU tensors in eager mode. Shape checks go
through ``torch._check`` so that torch.compile traces them without a host sync.
"""

from __future__ import annotations

import math

import torch

from fastssl.ops._checks import FLOAT_DTYPES, check_same


def check_temperature(temperature):
    """A validated Python float, or a 1-element floating tensor (not read: tau <= 0 -> NaN loss)."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError("temperature must be a positive number or a 1-element floating tensor")
        return temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return temperature


def _check(cond, msg: str) -> None:
    """torch._check with ValueError: symbolic-shape friendly under torch.compile, no host sync."""
    torch._check_with(ValueError, cond, lambda: msg)


def _check_embeddings(name: str, z) -> None:
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D [batch, dim], got shape {tuple(z.shape)}")
    if z.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16/bfloat16/float32/float64, got {z.dtype}")
    _check(z.shape[0] != 0, f"{name} is an empty batch (shape [0, D])")
    _check(z.shape[1] != 0, f"{name} has embedding dim D=0 (shape [N, 0])")


def check_pair(z1, z2) -> None:
    """nt_xent's z1, z2: 2-D float tensors of one shape, dtype and device, not empty."""
    _check_embeddings("z1", z1)
    _check_embeddings("z2", z2)
    for i in (0, 1):
        _check(z1.shape[i] == z2.shape[i], "z1 and z2 must have the same shape")
    check_same("z1", z1, "z2", z2, autocast_hint=False)  # nt_xent does not cast under autocast


def check_info_nce(query, keys, positive_index, exclude_self) -> None:
    """info_nce's query [M, D] and keys [Nk, D] (one dtype and device) and positive_index, an integer
    tensor [M] on their device; for CPU tensors in eager mode also its values: in [0, Nk), and != i with
    ``exclude_self``."""
    _check_embeddings("query", query)
    _check_embeddings("keys", keys)
    _check(query.shape[1] == keys.shape[1], "query and keys must have the same dim")
    check_same("query", query, "keys", keys, autocast_hint=False)
    if not isinstance(positive_index, torch.Tensor):
        raise ValueError("positive_index must be an integer tensor [M]")
    if positive_index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"positive_index must be an integer tensor, got {positive_index.dtype}")
    if positive_index.dim() != 1:
        raise ValueError(f"positive_index must have shape [M] (M = query rows), got {tuple(positive_index.shape)}")
    _check(positive_index.shape[0] == query.shape[0], "positive_index must have shape [M] (M = query rows)")
    if positive_index.device != query.device:
        raise ValueError(f"positive_index is on {positive_index.device} but query is on {query.device}")
    if query.device.type == "cpu" and not torch.compiler.is_compiling():
        # a CPU read costs no device sync; elsewhere an invalid positive gives a NaN loss instead
        p = positive_index.long()
        if bool((p < 0).any()) or bool((p >= keys.shape[0]).any()):
            raise ValueError(f"positive_index out of range [0, {keys.shape[0]})")
        if exclude_self and bool((p == torch.arange(p.shape[0], device=p.device)).any()):
            raise ValueError("exclude_self=True but some positive_index[i] == i (the excluded key)")
