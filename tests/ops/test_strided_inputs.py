"""Every op of fastssl.ops with a Triton or C++ path, given a strided view of one tensor argument at a
time, against its ``*_ref`` on contiguous float64 copies: values and (where differentiable) the
gradients, under a bound relative to their scale, on each back end that runs here (Triton under
TRITON_INTERPRET=1, the native CPU path).

A kernel that indexes a pointer as a flat array reads a strided view wrong (a stride-2 bias gave
errors of 5 in masked_patch_embed); each argument must be made contiguous or read through its strides.
The view: every other element of a buffer twice as wide in the last dim, from element 1 (so also a
storage offset); images also as channels_last memory. One-element tensors (random_masking's seed, a
tensor temperature) have no non-contiguous view: they get the offset view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from helpers import assert_rel_close
from mae_helpers import _one_thread, use_backend  # noqa: F401  (_one_thread: autouse fixture)

from fastssl.ops import (
    info_nce,
    info_nce_ref,
    masked_patch_embed,
    masked_patch_embed_ref,
    masked_patch_mse,
    masked_patch_mse_ref,
    nt_xent,
    nt_xent_ref,
    random_masking,
    random_masking_ref,
    sample_tiles,
    sample_tiles_ref,
    unshuffle,
    unshuffle_ref,
)
from fastssl.ops.jigsaw_permutations import _priority, all_permutations, hamming_greedy_op, jigsaw_permutations_ref
from fastssl.ops.random_masking import masking_keys
from fastssl.ops.sample_tiles import random_draws


def strided(x: torch.Tensor) -> torch.Tensor:
    """x's values in a view with stride 2 in the last dim and storage offset 1 (a 0-d x: offset 1 only)."""
    if x.dim() == 0:
        buf = torch.zeros(2, dtype=x.dtype)
        buf[1] = x
        v = buf[1]
    else:
        buf = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        v = buf[..., 1::2]
        v.copy_(x)
    assert v.storage_offset() == 1 and torch.equal(v, x)
    assert x.numel() <= 1 or not v.is_contiguous()
    return v


def channels_last(x: torch.Tensor) -> torch.Tensor:
    v = x.contiguous(memory_format=torch.channels_last)
    assert not v.is_contiguous()
    return v


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class Op:
    make: Callable[[], dict]  # named inputs (float32 / int), contiguous
    call: Callable[..., object]  # the op
    ref: Callable[..., object]  # its *_ref, called on float64 copies
    diff: tuple[str, ...] = ()  # differentiable arguments
    backends: tuple[str, ...] = ("native", "triton")
    views: dict = field(default_factory=dict)  # extra views of an argument: {arg: [(name, fn)]}


# --- MAE token ops: B=2, C=3, 8x12 images, 4 px patches (R = 48: the interpreter's masked reduction tail)


def _embed_inputs():
    g = _g(0)
    ids_keep = random_masking(2, 6, 0.5, generator=g)[0]
    return dict(images=torch.randn(2, 3, 8, 12, generator=g), weight=torch.randn(10, 3, 4, 4, generator=g) / 7,
                bias=torch.randn(10, generator=g), pos_embed=torch.randn(6, 10, generator=g), ids_keep=ids_keep)


def _mse_inputs():
    g = _g(1)
    return dict(pred=torch.randn(2, 6, 48, generator=g), images=torch.randn(2, 3, 8, 12, generator=g) * 2 + 0.5,
                mask=random_masking(2, 6, 0.5, generator=g)[2])


def _unshuffle_inputs():
    g = _g(2)
    _, ids_restore, _ = random_masking(2, 7, 0.5, generator=g)  # K = 3
    return dict(x_visible=torch.randn(2, 3, 5, generator=g), mask_token=torch.randn(5, generator=g),
                ids_restore=ids_restore, pos_embed=torch.randn(7, 5, generator=g))


def _masking_inputs():
    return dict(seed=torch.tensor([123456789012345], dtype=torch.int64))


def _masking_ref(seed):
    ids_keep, ids_restore, mask = random_masking_ref(masking_keys(seed[0], 3, 10), 4)
    return ids_keep.sort(dim=1).values, mask  # the op's ids_keep is ascending; ids_restore checked by its tests


# --- contrastive losses: fp32 (the Triton path takes fp32 up to D = 128), a tensor temperature


def _nt_xent_inputs():
    g = _g(3)
    return dict(z1=torch.randn(5, 12, generator=g), z2=torch.randn(5, 12, generator=g),
                temperature=torch.tensor([0.3]))


def _info_nce_inputs():
    g = _g(4)
    return dict(query=torch.randn(6, 12, generator=g), keys=torch.randn(9, 12, generator=g),
                positive_index=torch.randint(0, 9, (6,), generator=g), temperature=torch.tensor([0.3]))


# --- C++ ops (no Triton path): jigsaw tiles from float32 images, the greedy permutation search

_PERMS = torch.stack([torch.randperm(9, generator=_g(5 + i)) for i in range(4)])


def _tiles_inputs():
    draws = random_draws(2, task="jigsaw", grid=3, tile=6, height=24, width=25, channels=3, num_perms=4,
                         gray_p=0.5, generator=_g(9))
    return dict(images=torch.rand(2, 3, 24, 25, generator=_g(10)) * 4 - 2, perms=_PERMS.clone(), draws=draws)


def _tiles(images, perms, draws):
    return sample_tiles(images, "jigsaw", tile=6, perms=perms, normalize=True, draws=draws).tiles


def _tiles_ref(images, perms, draws):
    return sample_tiles_ref(images, draws, task="jigsaw", tile=6, perms=perms, normalize=True)


def _greedy_inputs():
    return dict(candidates=all_permutations(4).clone(), priority=_priority(24, 3))


def _greedy(candidates, priority):
    return candidates[hamming_greedy_op()(candidates, priority, 6, True)].long()


def _greedy_ref(candidates, priority):
    return jigsaw_permutations_ref(6, 4, "maxmin", 3)


OPS = {
    "masked_patch_embed": Op(_embed_inputs, lambda images, weight, bias, pos_embed, ids_keep: masked_patch_embed(
        images, weight, bias, pos_embed, 4, ids_keep), lambda images, weight, bias, pos_embed, ids_keep:
        masked_patch_embed_ref(images, weight, bias, pos_embed, 4, ids_keep),
        diff=("images", "weight", "bias", "pos_embed"), views={"images": [("channels_last", channels_last)]}),
    "masked_patch_mse": Op(_mse_inputs, lambda pred, images, mask: masked_patch_mse(pred, images, mask, 4),
                           lambda pred, images, mask: masked_patch_mse_ref(pred, images, mask, 4),
                           diff=("pred",), views={"images": [("channels_last", channels_last)]}),
    "unshuffle": Op(_unshuffle_inputs, unshuffle, unshuffle_ref, diff=("x_visible", "mask_token", "pos_embed")),
    "unshuffle_no_pos": Op(lambda: {k: v for k, v in _unshuffle_inputs().items() if k != "pos_embed"}, unshuffle,
                           unshuffle_ref, diff=("x_visible", "mask_token")),
    "random_masking": Op(_masking_inputs, lambda seed: (lambda o: (o[0], o[2]))(
        torch.ops.fastssl.random_masking(seed, 3, 10, 4)), _masking_ref),
    "nt_xent": Op(_nt_xent_inputs, nt_xent, nt_xent_ref, diff=("z1", "z2", "temperature")),
    "info_nce": Op(_info_nce_inputs, info_nce, info_nce_ref, diff=("query", "keys", "temperature")),
    "sample_tiles": Op(_tiles_inputs, _tiles, _tiles_ref, backends=("native",),
                       views={"images": [("channels_last", channels_last)]}),
    "hamming_greedy": Op(_greedy_inputs, _greedy, _greedy_ref, backends=("native",)),
}

CASES = [pytest.param(op, arg, view, bk, id=f"{op}-{arg}-{view}-{bk}")
         for op, spec in OPS.items() for arg, value in spec.make().items()
         for view in ["strided"] + [name for name, _ in spec.views.get(arg, [])] for bk in spec.backends]


def _run(fn, inputs: dict, diff: tuple[str, ...]):
    """(outputs, {arg: grad}) with the gradient of a fixed random projection of a tensor output."""
    leaves = {k: v.detach().requires_grad_() if k in diff else v for k, v in inputs.items()}
    out = fn(**leaves)
    if not diff:
        return out, {}
    proj = torch.randn(out.shape, generator=_g(7), dtype=torch.float64).to(out)
    (out * proj).sum().backward()
    return out.detach(), {k: leaves[k].grad for k in diff}


def _compare(actual, ref64, name: str) -> None:
    if isinstance(actual, (tuple, list)):
        for i, (a, r) in enumerate(zip(actual, ref64, strict=True)):
            _compare(a, r, f"{name}[{i}]")
    elif actual.is_floating_point():
        assert_rel_close(actual, ref64, dtype=torch.float32, name=name)
    else:
        assert torch.equal(actual, ref64), name


@pytest.mark.parametrize("op,arg,view,bk", CASES)
def test_strided_argument(monkeypatch, op, arg, view, bk):
    use_backend(monkeypatch, bk)
    spec = OPS[op]
    inputs = spec.make()
    make_view = strided if view == "strided" else dict(spec.views[arg])[view]
    out, grads = _run(spec.call, {**inputs, arg: make_view(inputs[arg])}, spec.diff)
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    ref, ref_grads = _run(spec.ref, inputs64, spec.diff)
    _compare(out, ref, f"{op} output ({arg} {view})")
    for name in spec.diff:
        _compare(grads[name], ref_grads[name], f"{op} d{name} ({arg} {view})")


def test_launch_refuses_a_strided_flat_argument():
    """The launch helper checks the rule itself: a kernel argument read as a flat array (here the bias)
    that is not contiguous stops the launch with the argument's name (a launcher bug, not user input)."""
    pytest.importorskip("triton")
    from fastssl.ops._backend import triton_interpreting
    from fastssl.ops._checks import launch
    from fastssl.ops.masked_patch_embed import embed_plan

    if not triton_interpreting():
        pytest.skip("the kernels are interpreted on CPU tensors only under TRITON_INTERPRET=1")
    x = _embed_inputs()
    wf = x["weight"].reshape(10, -1)
    out = torch.empty(2, 3, 10)
    plan = embed_plan(x["images"], x["ids_keep"], wf, strided(x["bias"]), x["pos_embed"], out, 4,
                      channels_last=False, tf32=False, arch=None)
    with pytest.raises(RuntimeError, match="argument BIAS is not contiguous"):
        launch(plan, x["images"])
