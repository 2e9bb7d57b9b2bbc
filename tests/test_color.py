"""fastssl.methods._color: Lab conversion, the in-gamut ab bins, soft encoding, rebalancing weights, annealed mean."""

import numpy as np
import pytest
import torch

from fastssl.methods._color import (
    RGB_TO_XYZ,
    WHITE_D65,
    ab_gamut_bins,
    annealed_mean,
    lab_to_rgb,
    rebalance_weights,
    rgb_to_lab,
    soft_encode,
    soft_encode_ref,
)


def _lab_ref(rgb: np.ndarray) -> np.ndarray:
    """Scalar-formula CIE Lab of sRGB rows [N, 3] (float64 numpy, written independently of the op)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array(RGB_TO_XYZ).T / np.array(WHITE_D65)
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def test_rgb_to_lab_matches_the_scalar_formulas_and_known_colours():
    rgb = torch.rand(3, 3, 7, 5, dtype=torch.float64)
    rgb[0, :, 0, 0] = 0.0  # black and tiny values take the linear branches
    rgb[0, :, 0, 1] = 0.001
    lab = rgb_to_lab(rgb)
    ref = _lab_ref(rgb.permute(0, 2, 3, 1).reshape(-1, 3).numpy())
    got = lab.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    assert np.abs(got - ref).max() <= 1e-9 * np.abs(ref).max()
    # Published sRGB/D65 values: white (100, 0, 0), red (53.24, 80.09, 67.20), blue (32.30, 79.19, -107.86).
    known = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=torch.float64).T[:, :, None]
    want = torch.tensor([[100.0, 0, 0], [53.24, 80.09, 67.20], [32.30, 79.19, -107.86]], dtype=torch.float64)
    assert (rgb_to_lab(known)[:, :, 0].T - want).abs().max() < 0.02


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lab_round_trip(dtype, bound):
    rgb = torch.rand(4, 3, 9, 11, dtype=dtype)
    back = lab_to_rgb(rgb_to_lab(rgb), clamp=False)
    assert back.dtype == dtype
    assert (back - rgb).abs().max() <= bound  # rgb in [0, 1]: the bound is relative to scale 1
    lab = rgb_to_lab(rgb)
    assert (rgb_to_lab(lab_to_rgb(lab)) - lab).abs().max() <= 1e3 * bound * 100  # Lab scale ~100


def test_lab_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_lab(torch.rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match="3, H, W"):
        lab_to_rgb(torch.rand(5, 5))


def test_gamut_bins_by_the_rule_against_a_numpy_reference():
    bins = ab_gamut_bins(10)
    # Reference: the RGB cube's faces at 512 levels per side, through the scalar formulas.
    t = np.linspace(0, 1, 512)
    u, v = (a.ravel() for a in np.meshgrid(t, t))
    faces = [np.insert(np.stack([u, v], 1), axis, value, axis=1) for axis in range(3) for value in (0.0, 1.0)]
    ab = _lab_ref(np.concatenate(faces))[:, 1:]
    ref = {tuple(c) for c in (np.floor(ab / 10 + 0.5) * 10).astype(int)}
    got = {tuple(c) for c in bins.long().tolist()}
    assert got == ref
    assert len(got) == 262  # the paper's released file has 313 (README: its rule is not documented)
    assert bins.dtype == torch.float32 and bins.shape == (262, 2)
    # Same extent as the paper's pts_in_hull: a in [-90, 100], b in [-110, 90]; the grey bin is in.
    assert bins[:, 0].min() == -90 and bins[:, 0].max() == 100
    assert bins[:, 1].min() == -110 and bins[:, 1].max() == 90
    assert (0, 0) in got
    # Interior points of the cube never leave the footprint of its faces.
    inner = _lab_ref(np.random.default_rng(0).random((20000, 3)))[:, 1:]
    assert {tuple(c) for c in (np.floor(inner / 10 + 0.5) * 10).astype(int)} <= got
    with pytest.raises(ValueError, match="grid"):
        ab_gamut_bins(0)


def test_soft_encode_matches_reference_and_sums_to_one():
    bins = ab_gamut_bins(10)
    ab = (torch.rand(2, 2, 3, 5) - 0.5) * 160
    ab[0, :, 0, 0] = bins[7]  # exactly on a bin centre
    z = soft_encode(ab, bins)
    ref = soft_encode_ref(ab, bins)
    assert z.shape == (2, bins.shape[0], 3, 5) and z.dtype == torch.float32
    assert (z.double() - ref).abs().max() <= 1e-6
    assert torch.allclose(z.sum(1), torch.ones(2, 3, 5), atol=1e-6)
    assert ((z > 0).sum(1) == 5).all()
    assert z[0, :, 0, 0].argmax() == 7
    # k=1 is the hard (one-hot) encoding of the nearest bin.
    z1 = soft_encode(ab, bins, k=1)
    assert torch.equal(z1.argmax(1), z.argmax(1)) and torch.equal(z1.sum(1), torch.ones(2, 3, 5))


def test_soft_encode_rejects_bad_input():
    bins = ab_gamut_bins(10)
    with pytest.raises(ValueError, match="ab must be"):
        soft_encode(torch.zeros(2, 3, 4, 4), bins)
    with pytest.raises(ValueError, match="k must be"):
        soft_encode(torch.zeros(1, 2, 4, 4), bins, k=0)
    with pytest.raises(ValueError, match="bins must be"):
        soft_encode(torch.zeros(1, 2, 4, 4), torch.zeros(5, 3))


def test_rebalance_weights_expectation_one_and_favour_rare_bins():
    bins = ab_gamut_bins(10)
    q = bins.shape[0]
    counts = torch.zeros(q, dtype=torch.float64)
    counts[:40] = torch.arange(1, 41, dtype=torch.float64) ** 3
    w = rebalance_weights(counts, bins, sigma=5.0, lam=0.5)
    # Independent smoothed distribution: Gaussian kernel over the bin centres, renormalized.
    c = bins.double()
    d2 = ((c[:, None] - c[None]) ** 2).sum(-1)
    p = counts / counts.sum()
    ps = (torch.exp(-d2 / 50) * p[None]).sum(1)
    ps = ps / ps.sum()
    assert abs(float((ps * w).sum()) - 1) < 1e-12
    expect = 1 / (0.5 * ps + 0.5 / q)
    assert torch.allclose(w, expect / (ps * expect).sum(), rtol=1e-12)
    order = torch.argsort(ps)
    assert (w[order][1:] <= w[order][:-1] + 1e-12).all()  # rarer -> larger weight
    assert w.max() / w.min() <= 2 * q  # bounded by the uniform mix (1 / lam * q over 1)
    assert torch.allclose(rebalance_weights(counts, bins, lam=1.0), torch.ones(q, dtype=torch.float64))


def test_rebalance_weights_reject_bad_input():
    bins = ab_gamut_bins(10)
    q = bins.shape[0]
    with pytest.raises(ValueError, match="positive total"):
        rebalance_weights(torch.zeros(q), bins)
    with pytest.raises(ValueError, match="counts must be"):
        rebalance_weights(torch.ones(q + 1), bins)
    with pytest.raises(ValueError, match="lam"):
        rebalance_weights(torch.ones(q), bins, lam=1.5)


def test_annealed_mean():
    bins = ab_gamut_bins(10)
    q = bins.shape[0]
    logits = torch.randn(2, q, 3, 4)
    mean = torch.einsum("bqhw,qc->bchw", torch.softmax(logits, 1), bins)
    assert torch.allclose(annealed_mean(logits, bins, 1.0), mean, atol=1e-4)
    # A sharp distribution decodes to its mode's bin centre, whatever T.
    sharp = torch.full((1, q, 1, 1), -50.0)
    sharp[0, 11] = 50.0
    assert torch.allclose(annealed_mean(sharp, bins, 0.38)[0, :, 0, 0], bins[11], atol=1e-3)
    # Lower T moves the decode towards the mode.
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    d_hot = (annealed_mean(logits, bins, 1.0) - mode).norm(dim=1).mean()
    d_cold = (annealed_mean(logits, bins, 0.05) - mode).norm(dim=1).mean()
    assert d_cold < d_hot
    with pytest.raises(ValueError, match="temperature"):
        annealed_mean(logits, bins, 0.0)


def _one_corner_counts(q: int) -> torch.Tensor:
    """Every counted pixel in bin 0 (a corner of the gamut): bins ~200 ab units away get a smoothed mass that
    underflows to exactly 0 in float64 (exp(-d^2 / 50)), the case of richzhang/colorization issue 69."""
    counts = torch.zeros(q, dtype=torch.float64)
    counts[0] = 1e6
    return counts


def test_rebalance_weights_are_bounded_and_lambda_0_is_refused():
    """lam = 0 (pure inverse frequency): 1 / p~ is inf for bins the counts never reach (and ~1e158, inf in float32,
    for near-empty ones); it is refused. Any lam > 0 gives weights <= Q / lam, finite in float32, expectation 1."""
    bins = ab_gamut_bins(10)
    q = bins.shape[0]
    counts = _one_corner_counts(q)
    with pytest.raises(ValueError, match=r"lam must be in \(0, 1\]"):
        rebalance_weights(counts, bins, lam=0.0)
    c = bins.double()
    ps = (torch.exp(-((c[:, None] - c[None]) ** 2).sum(-1) / 50) * (counts / counts.sum())[None]).sum(1)
    assert (ps == 0).sum() > 0  # the unreached bins exist: unbounded weights would be 1/0 there
    for lam in (1.0, 0.5, 1e-3, 1e-6, 1e-30):
        w = rebalance_weights(counts, bins, lam=lam)
        assert torch.isfinite(w.float()).all() and float(w.max()) <= q / lam * (1 + 1e-12), lam
        assert abs(float((ps / ps.sum() * w).sum()) - 1) < 1e-9, lam
        assert torch.equal(w[ps == 0], w.max().expand(int((ps == 0).sum())))  # the unreached bins weigh most


def test_colorize_loss_is_finite_on_a_colour_the_counts_never_saw():
    """A pixel whose colour fell only outside the counted centre crops lands in an unreached bin: its weight is
    at most Q / lam, so the class-rebalanced loss stays finite (it was inf with lam = 0)."""
    bins = ab_gamut_bins(10)
    q = bins.shape[0]
    w = rebalance_weights(_one_corner_counts(q), bins, lam=1e-6).float()
    far = int(((bins - bins[0]) ** 2).sum(1).argmax())
    ab = bins[far].view(1, 2, 1, 1).expand(1, 2, 2, 2)
    z = soft_encode(ab, bins)
    logp = torch.log_softmax(torch.randn(1, q, 2, 2), dim=1)
    loss = -(w[z.argmax(1)] * (z * logp).sum(1)).mean()
    assert torch.isfinite(loss) and float(loss) > 0


def test_soft_encode_with_a_tiny_sigma_is_the_one_hot_limit_not_nan():
    """exp(-d^2 / 2 sigma^2) normalized: once d^2 / 2 sigma^2 overflows, every unshifted logit of a pixel between
    bins is -inf and the softmax is 0/0 = NaN; shifted by the nearest distance it is one-hot on the nearest bin."""
    bins = ab_gamut_bins(10)
    ab = (torch.rand(2, 2, 3, 5) - 0.5) * 160
    hard = soft_encode(ab, bins, k=1)
    for sigma in (1e-3, 1e-18, 1e-200):
        z = soft_encode(ab, bins, sigma=sigma)
        assert torch.isfinite(z).all() and torch.equal(z, hard), sigma
    with pytest.raises(ValueError, match="sigma must be > 0"):
        soft_encode(ab, bins, sigma=0.0)
    # A pixel exactly between two bins keeps its tie at any sigma (the shift changes no ratio).
    i = int(next(j for j in range(len(bins) - 1) if torch.equal(bins[j + 1] - bins[j], torch.tensor([0.0, 10.0]))))
    mid = ((bins[i] + bins[i + 1]) / 2).view(1, 2, 1, 1)  # 5 from both, >= 11 from every other bin
    z = soft_encode(mid, bins, k=2, sigma=1e-30)
    assert torch.equal(z[0, [i, i + 1], 0, 0], torch.tensor([0.5, 0.5]))


def test_gamut_bins_are_a_fresh_copy_each_call():
    """colorize registers the bins as a buffer; load_state_dict writes into buffers in place. A cached tensor
    handed out as is was overwritten by a checkpoint's values for every later caller (found by test order)."""
    a = ab_gamut_bins(10)
    a.add_(1000)
    assert ab_gamut_bins(10).abs().max() <= 110
