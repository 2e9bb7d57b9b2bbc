"""The MAE model: the fused pipeline (masking -> masked embed -> encoder -> unshuffle -> loss) equals
the original token path on the same ids, loss and every parameter gradient, in float64; the picture's
reconstruction never uses the masked patches' pixels (nor their norm_pix statistics)."""

import pytest
import torch
from helpers import assert_close_to_ref

from fastssl.methods.mae import mae_forward
from fastssl.models.mae import MAEDecoder, init_mae_weights, masked_input, reconstruct_images
from fastssl.models.vit import VisionTransformer
from fastssl.ops import patchify, random_masking


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(img=(16, 24), p=4, d=32, dd=32):
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=img, patch_size=p, embed_dim=d, depth=2, num_heads=2, pos_embed="sincos",
                            pool="mean")
    init_mae_weights(enc)
    dec = MAEDecoder(d, enc.patch_embed.grid_size, p, dd, decoder_depth=1, decoder_heads=2)
    return enc.double(), dec.double()


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_fused_pipeline_equals_original(ratio, norm_pix):
    enc, dec = _model()
    b, n = 3, enc.patch_embed.num_patches
    images = torch.randn(b, 3, 16, 24, dtype=torch.float64)
    ids_keep, ids_restore, mask = random_masking(b, n, ratio, generator=torch.Generator().manual_seed(1))
    if ratio == 0.0:
        mask = torch.ones(b, n)  # nothing is masked at ratio 0: weigh every patch to compare the losses
    params = list(enc.parameters()) + list(dec.parameters())
    results = []
    for fused in (True, False):
        loss, pred = mae_forward(enc, dec, images, ids_keep, ids_restore, mask, norm_pix, fused=fused)
        results.append((loss.detach(), pred.detach(), torch.autograd.grad(loss, params)))
    (l1, p1, g1), (l0, p0, g0) = results
    assert_close_to_ref(l1, l0, name="loss")
    assert_close_to_ref(p1, p0, name="pred")
    for (name, _), a, b_ in zip(list(enc.named_parameters()) + list(dec.named_parameters()), g1, g0):
        assert_close_to_ref(a, b_, name=f"grad {name}")


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruction_never_reads_masked_pixels(norm_pix):
    b, p = 2, 4
    images = torch.randn(b, 3, 16, 16)
    pred = torch.randn(b, 16, p * p * 3)
    _, _, mask = random_masking(b, 16, 0.75, generator=torch.Generator().manual_seed(0))
    recon, pasted = reconstruct_images(pred, images, mask, p, norm_pix)
    # replace every masked patch's pixels by something else (huge values, inf, NaN): nothing changes
    patches = patchify(images, p)
    wild = torch.randn_like(patches) * 1e4
    wild[..., 0] = float("inf")
    wild[..., 1] = float("nan")
    other = torch.where((mask > 0)[..., None], wild, patches)
    from fastssl.ops import unpatchify

    images2 = unpatchify(other, p, (4, 4), 3)
    recon2, pasted2 = reconstruct_images(pred, images2, mask, p, norm_pix)
    assert torch.equal(recon, recon2) and torch.equal(pasted, pasted2)
    assert bool(torch.isfinite(recon).all())
    # pasted: visible patches are the image, masked ones the reconstruction
    vis = (mask == 0)[..., None]
    assert torch.equal(torch.where(vis, patchify(pasted, p), 0), torch.where(vis, patches, 0))
    assert torch.equal(torch.where(vis, 0, patchify(pasted, p)), torch.where(vis, 0, patchify(recon, p)))
    # masked input shows no masked pixel
    shown = patchify(masked_input(images2, mask, p), p)
    assert bool((shown[mask > 0] == 0).all())


def test_norm_pix_unnormalization_uses_visible_statistics():
    """A perfect norm_pix prediction of an image whose patches all share one mean/std comes back exact."""
    b, p = 1, 4
    base = torch.randn(1, 3, 4, 4)
    images = base.repeat(1, 1, 4, 4) * 2.0 + 3.0  # every patch the same pixels
    target = patchify(images, p)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    pred = (target - mean) / (var + 1e-6).sqrt()
    _, _, mask = random_masking(b, 16, 0.75, generator=torch.Generator().manual_seed(0))
    recon, _ = reconstruct_images(pred, images, mask, p, True)
    assert torch.allclose(recon, images, atol=1e-4)
