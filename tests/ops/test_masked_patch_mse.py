"""masked_patch_mse against the original forward_loss (patchify everything, norm_pix, error of all L
patches, masked mean) in float64: loss and d(pred), odd shapes (H != W, patch 4/8/16, C = 1 or 3,
B = 1), every mask ratio, norm_pix on/off, 16-bit pred, each back end (Triton under
TRITON_INTERPRET=1); constant patches give a zero target (never NaN), also under autocast; nothing
masked gives 0; unmasked patches get no gradient; bad input; opcheck; compile."""

import pytest
import torch
from helpers import assert_close_to_ref
from mae_helpers import _one_thread, grads, use_backend  # noqa: F401  (_one_thread: autouse fixture)

from fastssl.ops import masked_patch_mse, masked_patch_mse_ref, patchify, random_masking, unpatchify

# (B, C, H, W, p)
SHAPES = [(1, 3, 8, 12, 4), (2, 3, 16, 16, 8), (3, 1, 12, 20, 4), (2, 3, 32, 16, 16)]
RATIOS = [0.5, 0.75, 0.9]
CASES = [(bk, shape, ratio) for bk in ("native", "triton", "ref") for shape in SHAPES for ratio in RATIOS]


def _inputs(b, c, h, w, p, ratio, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = (h // p) * (w // p)
    images = torch.randn(b, c, h, w, generator=g, dtype=torch.float64) * 2 + 0.5
    pred = torch.randn(b, n, p * p * c, generator=g, dtype=torch.float64)
    mask = random_masking(b, n, ratio, generator=g)[2]
    return pred, images, mask


@pytest.mark.parametrize("bk,shape,ratio", CASES)
@pytest.mark.parametrize("norm_pix", [True, False])
def test_matches_original(monkeypatch, bk, shape, ratio, norm_pix):
    use_backend(monkeypatch, bk)
    p = shape[4]
    pred, images, mask = _inputs(*shape, ratio)
    m64 = mask.double()
    loss, (dp,) = grads(lambda x: masked_patch_mse(x, images.float(), mask, p, norm_pix), pred.float())
    ref64, (dp64,) = grads(lambda x: masked_patch_mse_ref(x, images, m64, p, norm_pix), pred)
    ref32, (dp32,) = grads(lambda x: masked_patch_mse_ref(x, images.float(), mask, p, norm_pix), pred.float())
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close_to_ref(loss, ref64, ref32, name="loss")
    assert_close_to_ref(dp, dp64, dp32, name="dpred")
    assert bool((dp[mask == 0] == 0).all()), "kept patches' predictions get no gradient"


@pytest.mark.parametrize("bk", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_pred(monkeypatch, bk, dtype):
    use_backend(monkeypatch, bk)
    pred, images, mask = _inputs(2, 3, 16, 24, 8, 0.75)
    loss, (dp,) = grads(lambda x: masked_patch_mse(x, images.float(), mask, 8), pred.to(dtype))
    ref64, (dp64,) = grads(lambda x: masked_patch_mse_ref(x, images, mask.double(), 8), pred.to(dtype).double())
    assert loss.dtype == torch.float32 and dp.dtype == dtype
    assert_close_to_ref(loss, ref64, dtype=torch.float32, name="loss")  # fp32 math on 16-bit inputs
    assert_close_to_ref(dp, dp64, dtype=dtype, name="dpred")


def test_gradcheck_float64():
    pred, images, mask = _inputs(2, 2, 8, 4, 2, 0.5)
    assert torch.autograd.gradcheck(lambda x: masked_patch_mse(x, images, mask, 2), [pred.requires_grad_()])


@pytest.mark.parametrize("bk", ["native", "triton"])
@pytest.mark.parametrize("autocast", [None, torch.float16, torch.bfloat16])
def test_constant_patch_zero_target(monkeypatch, bk, autocast):
    """norm_pix on a constant patch: zero target, no NaN (the loss is then mean(pred^2))."""
    use_backend(monkeypatch, bk)
    b, c, h, w, p = 2, 3, 16, 16, 8
    images = torch.full((b, c, h, w), 0.1234567)  # 0.1234567 * 192 / 192 != 0.1234567 in fp32
    images[1] = torch.linspace(-3, 7, c * h * w).view(c, h, w).round()  # patch values repeat exactly
    images[1, :, :8, :8] = 17.3
    pred = torch.randn(b, 4, p * p * c)
    mask = torch.ones(b, 4)
    mask[1, 1:] = 0  # sample 1: only its constant patch counts
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        x = pred.to(autocast) if autocast else pred
        loss, (dp,) = grads(lambda t: masked_patch_mse(t, images, mask, p), x)
    assert torch.isfinite(loss) and bool(torch.isfinite(dp).all())
    expected = (x.double()[:, :, :] ** 2).mean(-1)[mask > 0].sum() / 5  # target exactly 0
    assert abs(float(loss) - float(expected)) <= 1e-5 * float(expected)


def test_nothing_masked_is_zero():
    pred, images, _ = _inputs(2, 3, 16, 16, 8, 0.5)
    loss, (dp,) = grads(lambda x: masked_patch_mse(x, images.float(), torch.zeros(2, 4), 8), pred.float())
    assert float(loss) == 0.0 and not bool(dp.any())


def test_patchify_roundtrip_and_order():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    x = patchify(images, 4)
    assert x.shape == (2, 6, 48)
    assert torch.equal(x[0, 1, :3], images[0, :, 0, 4])  # (i, q, c): first the 3 channels of pixel (0, 4)
    assert torch.equal(unpatchify(x, 4, (2, 3), 3), images)


def test_bad_input():
    pred, images, mask = _inputs(2, 3, 16, 16, 8, 0.5)
    pred, images = pred.float(), images.float()
    with pytest.raises(ValueError, match="does not divide"):
        masked_patch_mse(pred, images, mask, 6)
    with pytest.raises(ValueError, match="pred must be"):
        masked_patch_mse(pred[..., :10], images, mask, 8)
    with pytest.raises(ValueError, match="mask must be"):
        masked_patch_mse(pred, images, mask[:, :3], 8)
    with pytest.raises(ValueError, match="images must be float"):
        masked_patch_mse(pred, images.to(torch.uint8), mask, 8)
    with pytest.raises(ValueError, match="on meta"):
        masked_patch_mse(pred, images, mask.to("meta"), 8)
    with pytest.raises(ValueError, match="at least 2 values"):
        masked_patch_mse(torch.randn(1, 4, 1), torch.randn(1, 1, 2, 2), torch.ones(1, 4), 1)
    with pytest.raises(ValueError, match="negative weights"):
        masked_patch_mse(pred, images, -mask, 8)


def test_mask_is_a_weight():
    # A weight of 2 counts a patch twice: the same as that patch listed twice in the average.
    pred, images, mask = _inputs(2, 3, 16, 16, 8, 0.5)
    pred, images = pred.float(), images.float()
    w = mask.clone()
    w[0] *= 2
    ref = masked_patch_mse_ref(pred.double(), images.double(), w.double(), 8)
    out = masked_patch_mse(pred, images, w, 8)
    assert float(ref) > 0.1 and abs(float(out) - float(ref)) <= 1e-5 * float(ref)


def test_opcheck_and_compile():
    pred, images, mask = _inputs(2, 3, 8, 12, 4, 0.5)
    pred, images = pred.float().requires_grad_(), images.float()
    torch.library.opcheck(torch.ops.fastssl.masked_patch_mse.default, (pred, images, mask, 4, True))
    torch.library.opcheck(torch.ops.fastssl.masked_patch_mse_backward.default,
                          (torch.tensor(1.5), pred.detach(), images, mask, 4, True))

    def f(x):
        return masked_patch_mse(x, images, mask, 4) * 3

    eager, (ge,) = grads(f, pred)
    compiled, (gc,) = grads(torch.compile(f, fullgraph=True), pred)
    assert torch.allclose(eager, compiled, rtol=1e-6) and torch.allclose(ge, gc, rtol=1e-5, atol=1e-8)


@pytest.mark.cuda
def test_cuda_matches_reference():
    pred, images, mask = _inputs(32, 3, 224, 224, 16, 0.75)
    loss, (dp,) = grads(lambda x: masked_patch_mse(x, images.float().cuda(), mask.cuda(), 16),
                        pred.cuda().bfloat16())
    ref, (dr,) = grads(lambda x: masked_patch_mse_ref(x, images.cuda(), mask.cuda().double(), 16),
                       pred.cuda().bfloat16().double())
    assert abs(float(loss) - float(ref)) <= 1e-4 * abs(float(ref))
    assert float((dp.double() - dr).abs().max()) <= 0.01 * float(dr.abs().max())
