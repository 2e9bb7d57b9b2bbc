"""unshuffle against the original (repeat mask token, cat, gather, + pos): values (exact: copies)
and gradients of x_visible, mask_token, pos_embed in float64 and 16-bit, odd shapes, every mask
ratio, each back end (Triton under TRITON_INTERPRET=1); bad input; opcheck; compile."""

import pytest
import torch
from helpers import assert_close_to_ref
from mae_helpers import _one_thread, grads, use_backend  # noqa: F401  (_one_thread: autouse fixture)

from fastssl.ops import random_masking, unshuffle, unshuffle_ref

# (B, L, D)
SHAPES = [(1, 7, 5), (2, 49, 20), (3, 100, 33), (2, 196, 48)]
RATIOS = [0.0, 0.5, 0.75, 0.9]
CASES = [(bk, shape, ratio) for bk in ("native", "triton", "ref") for shape in SHAPES for ratio in RATIOS
         if not (bk == "triton" and shape[1] > 100 and ratio in (0.0, 0.9))]  # interpreter time


def _inputs(b, n, d, ratio, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    _, ids_restore, _ = random_masking(b, n, ratio, generator=g)
    k = max(1, n - round(n * ratio))
    x = torch.randn(b, k, d, generator=g, dtype=torch.float64)
    mt = torch.randn(d, generator=g, dtype=torch.float64)
    pos = torch.randn(n, d, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, mt, pos)], ids_restore


@pytest.mark.parametrize("bk,shape,ratio", CASES)
@pytest.mark.parametrize("with_pos", [True, False])
def test_matches_original(monkeypatch, bk, shape, ratio, with_pos):
    use_backend(monkeypatch, bk)
    (x, mt, pos), ids = _inputs(*shape, ratio)
    if with_pos:
        out, gs = grads(lambda a, m, q: unshuffle(a, m, ids, q), x, mt, pos)
        ref, gr = grads(lambda a, m, q: unshuffle_ref(a, m, ids, q), x, mt, pos)
    else:
        out, gs = grads(lambda a, m: unshuffle(a, m, ids), x, mt)
        ref, gr = grads(lambda a, m: unshuffle_ref(a, m, ids), x, mt)
    assert out.shape == (shape[0], shape[1], shape[2])
    assert torch.equal(out, ref), "a copy (plus one add) must be exact"
    for name, a, b in zip(("x_visible", "mask_token", "pos"), gs, gr):
        assert_close_to_ref(a, b, name=f"d{name}")


@pytest.mark.parametrize("bk", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit(monkeypatch, bk, dtype):
    use_backend(monkeypatch, bk)
    (x, mt, pos), ids = _inputs(2, 49, 24, 0.75)
    out, gs = grads(lambda a, m, q: unshuffle(a, m, ids, q), *(t.to(dtype) for t in (x, mt, pos)))
    ref64, g64 = grads(lambda a, m, q: unshuffle_ref(a, m, ids, q), x, mt, pos)
    ref_lp, g_lp = grads(lambda a, m, q: unshuffle_ref(a, m, ids, q), *(t.to(dtype) for t in (x, mt, pos)))
    assert out.dtype == dtype
    assert_close_to_ref(out, ref64, ref_lp, name="out")
    for name, a, b, c in zip(("x_visible", "mask_token", "pos"), gs, g64, g_lp):
        assert_close_to_ref(a, b, c, name=f"d{name}")


def test_gradcheck_float64():
    (x, mt, pos), ids = _inputs(2, 9, 3, 0.5)
    xs = [t.requires_grad_() for t in (x, mt, pos)]
    assert torch.autograd.gradcheck(lambda a, m, q: unshuffle(a, m, ids, q), xs)


def test_mask_token_shapes_and_autocast():
    (x, mt, pos), ids = _inputs(2, 16, 8, 0.75, dtype=torch.float32)
    ref = unshuffle_ref(x, mt, ids, pos)
    assert torch.equal(unshuffle(x, mt.view(1, 1, 8), ids, pos.view(1, 16, 8)), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unshuffle(x.bfloat16(), mt, ids, pos)  # fp32 mask token / pos follow x's dtype
    assert out.dtype == torch.bfloat16
    assert float((out.float() - ref).abs().max()) <= 0.02 * float(ref.abs().max())


def test_bad_input():
    (x, mt, pos), ids = _inputs(2, 16, 8, 0.75, dtype=torch.float32)
    with pytest.raises(ValueError, match="mask_token must hold 8"):
        unshuffle(x, mt[:5], ids, pos)
    with pytest.raises(ValueError, match="pos_embed must be"):
        unshuffle(x, mt, ids, pos[:3])
    with pytest.raises(ValueError, match="int64"):
        unshuffle(x, mt, ids.float(), pos)
    with pytest.raises(ValueError, match="x_visible is torch.float32 but mask_token is torch.float64"):
        unshuffle(x, mt.double(), ids, pos)
    with pytest.raises(ValueError, match="only 16 positions"):
        unshuffle(torch.randn(2, 17, 8), mt, ids, pos)
    with pytest.raises(ValueError, match="3-D"):
        unshuffle(x[0], mt, ids, pos)
    with pytest.raises(ValueError, match="on meta"):
        unshuffle(x, mt, ids.to("meta"), pos)
    # Out-of-range ids would be clamped (native) or read out of bounds (kernel): refused on CPU.
    for bad in (16, -1):
        wrong = ids.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=rf"ids_restore holds the index {bad}, outside \[0, 16\)"):
            unshuffle(x, mt, wrong, pos)


def test_opcheck_and_compile():
    (x, mt, pos), ids = _inputs(2, 12, 6, 0.5, dtype=torch.float32)
    args = [t.requires_grad_() for t in (x, mt, pos)]
    torch.library.opcheck(torch.ops.fastssl.unshuffle.default, (*args[:2], ids, args[2]))
    torch.library.opcheck(torch.ops.fastssl.unshuffle_backward.default,
                          (torch.randn(2, 12, 6), ids, x.shape[1], True, True, True))

    def f(a, m, q):
        return (unshuffle(a, m, ids, q) ** 2).sum()

    eager, ge = grads(f, x, mt, pos)
    compiled, gc = grads(torch.compile(f, fullgraph=True), x, mt, pos)
    assert torch.allclose(eager, compiled, rtol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(ge, gc))


@pytest.mark.cuda
def test_cuda_matches_reference():
    (x, mt, pos), ids = _inputs(64, 196, 512, 0.75, dtype=torch.float32)
    xs = [t.cuda().bfloat16() for t in (x, mt, pos)]
    out, gs = grads(lambda a, m, q: unshuffle(a, m, ids.cuda(), q), *xs)
    ref, gr = grads(lambda a, m, q: unshuffle_ref(a, m, ids.cuda(), q), *[t.double() for t in xs])
    assert float((out.double() - ref).abs().max()) <= 0.01 * float(ref.abs().max())
    for a, b in zip(gs, gr):
        assert float((a.double() - b).abs().max()) <= 0.01 * float(b.abs().max())
