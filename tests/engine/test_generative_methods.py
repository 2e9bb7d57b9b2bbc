"""denoise, inpaint, colorize: corruption / targets against plain references, bad flags through the real
CLI, and a tiny end-to-end run of each through ``python -m fastssl.train`` (slow)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from fastssl.cli.train import parse_config
from fastssl.methods import build_method
from fastssl.methods._color import ab_gamut_bins, rgb_to_lab, soft_encode
from fastssl.methods.generative import from_pixels, to_pixels
from fastssl.methods.inpaint import center_mask, random_block_mask


def _run(args, env=None):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}, timeout=900)


def _tiny(method, data, out, *extra):
    return ["--method", method, "--data", str(data), "--width", "8", "--image-size", "32", "--batch-size", "16",
            "--epochs", "2", "--workers", "1", "--warmup-epochs", "0.5", "--quiet", "--out", str(out), *extra]


def _method(name, data, *extra):
    torch.manual_seed(0)
    return build_method(name, parse_config(_tiny(name, data, "unused", *extra)))


# ----------------------------------------------------------------------------- denoise

def test_denoise_corruption_statistics(tiny_data):
    m = _method("denoise", tiny_data, "--noise-std", "0", "--mask-frac", "0.3")
    x = from_pixels(torch.rand(64, 3, 32, 32) * 0.8 + 0.1)  # no pixel is black before masking
    noisy = to_pixels(m.corrupt(x))
    black = (noisy.abs() < 1e-5).all(1)
    assert abs(black.float().mean().item() - 0.3) < 0.01  # 65,536 pixels: 4 sigma ~ 0.007
    assert torch.allclose(noisy[~black[:, None].expand_as(noisy)], to_pixels(x)[~black[:, None].expand_as(noisy)],
                          atol=1e-5)
    m = _method("denoise", tiny_data, "--noise-std", "0.2", "--mask-frac", "0")
    diff = to_pixels(m.corrupt(x)) - to_pixels(x)
    assert abs(diff.std().item() - 0.2) < 0.005 and abs(diff.mean().item()) < 0.005


def test_denoise_loss_is_mse_to_the_clean_view(tiny_data):
    m = _method("denoise", tiny_data)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    loss, _ = m([x], None)
    torch.manual_seed(1)
    recon = m.reconstruct(m.corrupt(x))
    assert recon.shape == x.shape
    assert torch.allclose(loss, ((recon - x) ** 2).mean(), rtol=1e-5)


def _norm_pix_loss_by_hand(pred, x, weight, p):
    """Patch by patch with loops: the target's P x P x C values standardized (unbiased var + 1e-6), the
    squared error against the prediction's raw values averaged in the patch, weighted by the patch's mean
    pixel weight."""
    total, wsum = 0.0, 0.0
    for b in range(x.shape[0]):
        for i in range(0, x.shape[2], p):
            for j in range(0, x.shape[3], p):
                t = x[b, :, i:i + p, j:j + p].double()
                t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                w = 1.0 if weight is None else float(weight[b, 0, i:i + p, j:j + p].double().mean())
                total += w * float(((pred[b, :, i:i + p, j:j + p].double() - t) ** 2).mean())
                wsum += w
    return total / wsum


@pytest.mark.parametrize("use_weight", [False, True])
def test_norm_pix_reconstruction_loss_matches_a_patch_loop(use_weight):
    from fastssl.methods.generative import reconstruction_loss
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 12, 16, generator=g) * 3 + 1  # scale and offset the loss must remove
    pred = torch.randn(2, 3, 12, 16, generator=g)
    weight = None
    if use_weight:
        weight = torch.zeros(2, 1, 12, 16)
        weight[:, :, 4:8, 4:12] = 1.0
        weight[1, :, 0:2, 0:4] = 10.0  # a partly covered patch: its mean weight, 5
    got = float(reconstruction_loss(pred, x, weight, 4))
    want = _norm_pix_loss_by_hand(pred, x, weight, 4)
    assert abs(got - want) <= 1e-5 * want, (got, want)
    # brightness and contrast per patch do not count: an affine change of every patch leaves the loss
    assert abs(float(reconstruction_loss(pred, 5 * x - 2, weight, 4)) - got) <= 1e-4 * got
    # and without --norm-pix it is the plain (weighted) MSE
    raw = float(reconstruction_loss(pred, x, weight, 0))
    w = torch.ones(2, 1, 12, 16) if weight is None else weight
    assert abs(raw - float(((pred - x) ** 2 * w).sum() / (w.sum() * 3))) <= 1e-5 * raw


@pytest.mark.parametrize("method", ["denoise", "inpaint"])
def test_norm_pix_flag_changes_the_target_and_keeps_the_gradient_path(method, tiny_data):
    x = torch.randn(3, 3, 32, 32)
    m = _method(method, tiny_data, "--norm-pix", "8")
    torch.manual_seed(1)
    loss, _ = m([x], None)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in m.backbone.parameters() if p.grad is not None]
    assert grads and max(float(g.abs().max()) for g in grads) > 0
    raw = _method(method, tiny_data, "--norm-pix", "0")
    raw.load_state_dict(m.state_dict())
    torch.manual_seed(1)
    loss_raw, _ = raw([x], None)
    assert abs(float(loss_raw) - float(loss)) > 1e-3  # a different target, not the same loss


@pytest.mark.parametrize("method", ["denoise", "inpaint"])
def test_input_norm_image_standardizes_each_image_inside_the_backbone(method, tiny_data):
    from fastssl.models.inputs import StandardizedInput
    m = _method(method, tiny_data, "--input-norm", "image")
    assert isinstance(m.backbone, StandardizedInput)
    assert not isinstance(_method(method, tiny_data).backbone, StandardizedInput)  # the flag's default: none
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    scale = torch.tensor([2.0, 0.5, 3.0]).view(1, 3, 1, 1)
    # each image's per-channel brightness and contrast do not reach the encoder
    a, b = m.backbone.forward_features(x), m.backbone.forward_features(x * scale + 1.5)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


# ----------------------------------------------------------------------------- inpaint

def test_center_mask_and_overlap_weights():
    removed, region = center_mask(2, 32, 0.5, 0, "cpu")
    ref = torch.zeros(32, 32)
    ref[8:24, 8:24] = 1
    assert torch.equal(removed[1, 0], ref) and removed.shape == (2, 1, 32, 32)
    removed, region = center_mask(1, 32, 0.5, 2, "cpu")
    inner = torch.zeros(32, 32)
    inner[10:22, 10:22] = 1
    assert torch.equal(removed[0, 0], inner)
    assert torch.equal(region[0, 0] == 2, (ref == 1) & (inner == 0))  # the band: in the square, visible


def test_random_blocks_cover_at_most_their_area():
    gen = torch.Generator().manual_seed(0)
    m = random_block_mask(50, 32, 4, "cpu", gen)
    area = m.sum((1, 2, 3))
    assert (area >= 64).all() and (area <= 4 * 64).all() and area.float().mean() > 150  # overlaps are rare
    one = random_block_mask(20, 32, 1, "cpu", gen)
    rows, cols = one[:, 0].any(2), one[:, 0].any(1)
    assert (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all() and (one.sum((1, 2, 3)) == 64).all()


def test_inpaint_loss_only_on_the_removed_region(tiny_data):
    m = _method("inpaint", tiny_data, "--overlap", "2", "--overlap-weight", "10")
    x = torch.randn(3, 3, 32, 32)
    removed, weight = m.masks(x)
    pred = m.reconstruct(x * (1 - removed)).detach().requires_grad_()
    err = (pred - x) ** 2 * weight
    loss = err.sum() / (weight.sum() * 3)
    loss.backward()
    outside = weight == 0
    assert (pred.grad * outside).abs().max() == 0 and (pred.grad * ~outside).abs().max() > 0
    assert set(weight.unique().tolist()) == {0.0, 1.0, 10.0}
    full, _ = m([x], None)
    assert torch.isfinite(full)
    # The encoder never sees the removed pixels: changing them leaves the prediction unchanged.
    m.eval()
    x2 = x + removed * torch.randn_like(x)
    assert torch.allclose(m.reconstruct(x * (1 - removed)), m.reconstruct(x2 * (1 - removed)))


def test_inpaint_adversarial_term_changes_the_loss_and_trains_its_discriminator(tiny_data):
    from fastssl.engine.optim import build_optimizer

    x = torch.randn(4, 3, 32, 32)
    plain = _method("inpaint", tiny_data)
    adv = _method("inpaint", tiny_data, "--adv-weight", "0.001")
    assert plain.discriminator is None and adv.discriminator is not None
    # Same seed, same encoder/decoder weights: only the adversarial term differs.
    common = {k: v for k, v in adv.state_dict().items() if not k.startswith("discriminator.")}
    assert common.keys() == plain.state_dict().keys()
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in common.items())
    loss_plain, _ = plain([x], None)
    loss_adv, met = adv([x], None)
    assert set(met) == {"rec", "adv_g", "adv_d"}
    assert torch.allclose(met["rec"], loss_plain)
    expected = 0.999 * met["rec"] + 0.001 * met["adv_g"] + met["adv_d"]
    assert torch.allclose(loss_adv, expected) and not torch.allclose(loss_adv, loss_plain)
    # The discriminator's parameters are in the trainer's optimizer (built from all the method's parameters).
    opt = build_optimizer("adamw", adv, 1e-3, 0.05)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    d_params = list(adv.discriminator.parameters())
    assert d_params and all(id(p) in in_opt for p in d_params)
    # Each player's loss reaches only its own parameters (one backward, one step).
    removed, weight = adv.masks(x)
    pred = adv.reconstruct(x * (1 - removed))
    region = (weight > 0).float()
    real, fake = adv.adv_region(x), adv.adv_region(x * (1 - region) + pred * region)
    loss_g, loss_d = adv.adversarial_losses(real, fake)
    g_params = list(adv.decoder.parameters()) + list(adv.backbone.parameters())
    grads_g = torch.autograd.grad(loss_g, d_params + g_params, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads_g[:len(d_params)])
    assert max(g.abs().max() for g in grads_g[len(d_params):] if g is not None) > 0
    grads_d = torch.autograd.grad(loss_d, d_params + g_params, allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads_d[len(d_params):])
    assert max(g.abs().max() for g in grads_d[:len(d_params)] if g is not None) > 0
    # The generator's term is the non-saturating BCE(D(fake), 1) on D's current weights.
    logit = adv.discriminator(fake)
    assert torch.allclose(loss_g, torch.nn.functional.softplus(-logit).mean(), atol=1e-6)
    # D judges the centre square (the inpainted region), the whole image with random blocks.
    assert real.shape[-1] == 16
    rand = _method("inpaint", tiny_data, "--adv-weight", "0.5", "--mask", "random")
    assert rand.adv_region(x).shape[-1] == 32 and torch.isfinite(rand([x], None)[0])


# ----------------------------------------------------------------------------- colorize

def test_colorize_targets_and_weights(tiny_data, fastssl_cache):
    m = _method("colorize", tiny_data)
    assert m.bins.shape == ab_gamut_bins(10).shape
    w = m.class_weights.double()
    cache = list((fastssl_cache[0] / "colorize").glob("bin_counts_*.pt"))
    assert len(cache) == 1
    counts = torch.load(cache[0], weights_only=True)
    from fastssl.methods._color import rebalance_weights

    assert torch.allclose(w, rebalance_weights(counts, m.bins), rtol=1e-6)
    assert counts.sum() == 96 * 8 * 8  # 96 images, targets at 32 / 4 = 8 px
    x = from_pixels(torch.rand(2, 3, 32, 32))
    z, v = m.targets(x)
    ab = torch.nn.functional.avg_pool2d(rgb_to_lab(to_pixels(x).clamp(0, 1))[:, 1:], 4)
    assert torch.allclose(z, soft_encode(ab, m.bins), atol=1e-6)
    assert torch.allclose(z.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert torch.equal(v, m.class_weights[z.argmax(1)])
    # The backbone sees L only: two images with the same L and different colours give the same features.
    lab = rgb_to_lab(torch.full((1, 3, 32, 32), 0.5))
    lab2 = lab.clone()
    lab2[:, 1] += 20
    from fastssl.methods._color import lab_to_rgb

    m.eval()
    f1 = m.backbone(from_pixels(lab_to_rgb(lab)))
    f2 = m.backbone(from_pixels(lab_to_rgb(lab2)))
    assert torch.allclose(f1, f2, atol=1e-4) and f1.shape == (1, m.backbone.feature_dim)
    # A second build reads the cache (same weights, no second pass).
    assert torch.equal(_method("colorize", tiny_data).class_weights, m.class_weights)


# ----------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args,needle", [
    (["--method", "denoise", "--mask-frac", "1.5"], "--mask-frac"),
    (["--method", "denoise", "--noise-std", "-1"], "--noise-std"),
    (["--method", "denoise", "--noise-std", "0", "--mask-frac", "0"], "--noise-std 0"),
    (["--method", "denoise", "--arch", "vit_tiny"], "--arch vit_tiny"),
    (["--method", "inpaint", "--hole", "1"], "--hole"),
    (["--method", "inpaint", "--overlap", "20"], "--overlap 20"),
    (["--method", "inpaint", "--mask", "random", "--overlap", "2"], "--overlap"),
    (["--method", "inpaint", "--blocks", "0"], "--blocks"),
    (["--method", "inpaint", "--adv-weight", "1"], "--adv-weight"),
    (["--method", "inpaint", "--adv-weight", "-0.1"], "--adv-weight"),
    (["--method", "inpaint", "--disc-width", "0"], "--disc-width"),
    (["--method", "denoise", "--norm-pix", "7"], "--norm-pix 7"),
    (["--method", "denoise", "--norm-pix", "-1"], "--norm-pix"),
    (["--method", "inpaint", "--norm-pix", "1"], "--norm-pix 1"),
    (["--method", "inpaint", "--input-norm", "tiles"], "--input-norm"),
    (["--method", "inpaint", "--norm-pix", "8", "--adv-weight", "0.001"], "--norm-pix with --adv-weight"),
    (["--method", "colorize", "--rebalance-lambda", "2"], "--rebalance-lambda"),
    (["--method", "colorize", "--anneal-t", "0"], "--anneal-t"),
    (["--method", "colorize", "--arch", "vit_small"], "--arch vit_small"),
])
def test_bad_flags_one_line_error(args, needle, tmp_path):
    out = tmp_path / "run"
    r = _run([*args, "--out", str(out)])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith(("fastssl.train: error:", "python -m fastssl.train: error:")), r.stderr
    assert needle in lines[-1]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["denoise", "inpaint", "colorize"])
def test_tiny_end_to_end_run(method, tiny_data, tmp_path, fastssl_cache):
    out = tmp_path / "run"
    extra = {"inpaint": ["--mask", "random"], "denoise": ["--norm-pix", "8", "--input-norm", "image"]}.get(method, [])
    r = _run(_tiny(method, tiny_data, out, *extra))
    assert r.returncode == 0, r.stderr
    for name in ["config.json", "last.pt", "eval.json", "viz/epoch_000.png", "viz/epoch_002.png"]:
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    ev = json.loads((out / "eval.json").read_text())
    assert 0 <= ev["learned"]["top1"] <= 100 and 0 <= ev["random_init"]["top1"] <= 100
    r = subprocess.run([sys.executable, "-m", "fastssl.eval", "knn", "--checkpoint", str(out), "--workers", "1"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)
    assert r.returncode == 0, r.stderr
