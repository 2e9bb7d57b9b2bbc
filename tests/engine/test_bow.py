"""bow: k-means against a plain reference, BoW histograms, teacher errors through the real CLI, tiny runs."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastssl.base.errors import ConfigError
from fastssl.cli.train import parse_config
from fastssl.methods.bow import bow_histogram, soft_bow_histogram
from fastssl.methods.kmeans import assign, kmeans, kmeans_pp_init, lloyd


def _run(args):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=900)


def _lloyd_ref(x: np.ndarray, c: np.ndarray, iters: int) -> np.ndarray:
    """Textbook Lloyd in float64 numpy (nearest centre by a Python loop over centres)."""
    c = c.copy()
    for _ in range(iters):
        d = np.stack([((x - ci) ** 2).sum(1) for ci in c], 1)
        idx = d.argmin(1)
        for j in range(len(c)):
            if (idx == j).any():
                c[j] = x[idx == j].mean(0)
    return c


def test_lloyd_matches_reference_from_the_same_seeding():
    x = torch.randn(301, 5, dtype=torch.float64)
    init = kmeans_pp_init(x, 7, torch.Generator().manual_seed(3))
    got = lloyd(x, init.clone(), iters=50)
    ref = _lloyd_ref(x.numpy(), init.numpy(), 50)
    assert np.abs(got.numpy() - ref).max() <= 1e-9 * np.abs(ref).max()


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (true.repeat_interleave(50, 0) + 0.3 * torch.randn(200, 2, generator=gen))
    c = kmeans(x, 4, iters=20, seed=0)
    d = torch.cdist(true, c)
    assert d.min(1).values.max() < 0.2 and (d.argmin(1).sort().values == torch.arange(4)).all()
    assert torch.equal(c, kmeans(x, 4, iters=20, seed=0))
    idx = assign(x, c)
    assert (idx.view(4, 50) == idx.view(4, 50)[:, :1]).all()  # each blob is one word
    with pytest.raises(ValueError, match="k >= 2"):
        kmeans(x, 1)
    with pytest.raises(ValueError, match="N >= k"):
        kmeans(x[:3], 4)


def test_bow_histograms_sum_to_one_and_count_words():
    words = torch.randint(0, 9, (5, 16))
    h = bow_histogram(words, 9)
    assert h.shape == (5, 9) and torch.allclose(h.sum(1), torch.ones(5))
    ref = torch.stack([torch.bincount(w, minlength=9).float() / 16 for w in words])
    assert torch.equal(h, ref)


def _soft_ref(f: np.ndarray, v: np.ndarray, inv_delta: float) -> np.ndarray:
    """Soft BoW in float64 numpy with explicit loops (the spec of soft_bow_histogram)."""
    b, n, _ = f.shape
    d = np.array([[[((f[i, u] - vk) ** 2).sum() for vk in v] for u in range(n)] for i in range(b)])  # [B, L, K]
    mu = d.min(-1).mean()
    e = np.exp(-(inv_delta / mu) * (d - d.min(-1, keepdims=True)))
    return (e / e.sum(-1, keepdims=True)).mean(1)


def test_soft_bow_histograms_sum_to_one_and_tend_to_hard():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(3, 7, 5, generator=g)
    vocab = torch.randn(6, 5, generator=g)
    h = soft_bow_histogram(f, vocab, 15.0)
    assert h.shape == (3, 6) and h.dtype == torch.float32
    assert torch.allclose(h.sum(1), torch.ones(3), atol=1e-6) and (h > 0).all()
    ref = _soft_ref(f.double().numpy(), vocab.double().numpy(), 15.0)
    assert np.abs(h.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    hard = bow_histogram(assign(f.reshape(-1, 5), vocab).view(3, 7), 6)
    assert (h - hard).abs().max() > 0.01  # soft at the default inverse temperature
    # temperature -> 0 (inv_delta -> inf): the codes become one-hot on the nearest word
    assert torch.allclose(soft_bow_histogram(f, vocab, 1e6), hard, atol=1e-6)
    # scale-free: scaling features and words together leaves the codes unchanged
    assert torch.allclose(soft_bow_histogram(10 * f, 10 * vocab, 15.0), h, atol=1e-5)


def test_soft_bow_is_finite_when_every_feature_sits_on_a_word():
    """mu (the mean distance to the nearest word) is 0 when every local feature equals a word (e.g. a dead teacher
    layer: all zeros): inv_delta / mu overflowed and inf * 0 made the codes NaN. Now the hard histogram, the limit."""
    g = torch.Generator().manual_seed(0)
    vocab = torch.randn(6, 5, generator=g)
    words = torch.randint(0, 6, (3, 7), generator=g)
    f = vocab[words]  # every feature exactly on its word
    h = soft_bow_histogram(f, vocab, 15.0)
    assert torch.isfinite(h).all() and torch.equal(h, bow_histogram(words, 6))
    zeros = torch.zeros(2, 4, 5)  # a dead layer, and a vocabulary that holds the zero vector
    h = soft_bow_histogram(zeros, torch.cat([torch.zeros(1, 5), vocab]), 15.0)
    assert torch.isfinite(h).all() and torch.equal(h, torch.eye(7)[[0, 0]])
    # nearly on the words: finite, rows sum to 1, the nearest word dominates
    h = soft_bow_histogram(f + 1e-20, vocab, 15.0)
    assert torch.isfinite(h).all() and torch.allclose(h.sum(1), torch.ones(3))


def test_kmeans_warns_when_centres_repeat():
    """Fewer distinct points than k: k-means++ must repeat some, and a repeated centre can never be assigned (ties
    go to the lowest index) -- a bow word no histogram contains. Warned, naming how many centres are distinct."""
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(10, 1)  # 30 points, 3 distinct
    with pytest.warns(UserWarning, match=r"k-means of the teacher's features: only 3 of the 5 centres \(--vocab-size "
                                         r"5\) are distinct \(30 points, 3 distinct\): 2 centre\(s\) repeat"):
        c = kmeans(x, 5, iters=5, seed=0, what="the teacher's features", k_name="--vocab-size")
    assert torch.unique(c, dim=0).shape[0] == 3 and set(assign(x, c).tolist()) <= {0, 1, 2, 3, 4}
    assert len(set(assign(x, c).tolist())) == 3  # two of the five words are never assigned
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough distinct points: no warning
        kmeans(torch.randn(30, 2, generator=torch.Generator().manual_seed(0)), 5, iters=5, seed=0)


def test_kmeans_pp_seeding_survives_distances_whose_float32_sum_overflows():
    """The seeding's probabilities are d^2 / sum d^2; with features ~1e18 the float32 sum is inf (every p was 0
    and torch.multinomial refused); normalized in float64 the seeding picks k distinct points."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(0)) * 3e18
    assert torch.isinf(((x - x[0]) ** 2).sum(1).sum())  # the float32 sum overflows
    c = kmeans_pp_init(x, 8, torch.Generator().manual_seed(0))
    assert torch.isfinite(c).all() and torch.unique(c, dim=0).shape[0] == 8


def test_missing_teacher_is_one_line_error_through_the_cli(tmp_path, tiny_data):
    out = tmp_path / "run"
    r = _run(["--method", "bow", "--data", str(tiny_data), "--out", str(out)])
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: error: --teacher is required") and "--method rotation" in last
    assert not out.exists()


@pytest.mark.parametrize("flags,needle", [(["--assign", "fuzzy"], "--assign"), (["--inv-delta", "0"], "--inv-delta")])
def test_bad_assignment_flags_one_line_error(flags, needle, tmp_path, tiny_data):
    out = tmp_path / "run"
    r = _run(["--method", "bow", "--data", str(tiny_data), "--teacher", str(tmp_path), "--out", str(out), *flags])
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fastssl.train: error:") and needle in last, r.stderr
    assert not out.exists()


class _Evil:
    """Unpickling this would create a file (a stand-in for a shell command)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_bad_teachers(tmp_path, tiny_data):
    base = ["--method", "bow", "--data", str(tiny_data)]
    with pytest.raises(ConfigError, match="no checkpoint at"):
        parse_config([*base, "--teacher", str(tmp_path / "missing")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a torch.save file"):
        parse_config([*base, "--teacher", str(bad)])
    # A crafted pickle (someone else's "teacher") must not run: refused before anything is built.
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    torch.save({"model": {}, "config": _Evil(marker)}, evil)
    with pytest.raises(ConfigError, match="nothing in it ran"):
        parse_config([*base, "--teacher", str(evil)])
    assert not marker.exists()
    weights_only = tmp_path / "weights.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, weights_only)
    with pytest.raises(ConfigError, match="not a fastssl training checkpoint"):
        parse_config([*base, "--teacher", str(weights_only)])
    other = tmp_path / "other"
    other.mkdir()
    torch.save({"model": {}, "config": {"method": "simclr", "arch": "vit_tiny"}}, other / "last.pt")
    with pytest.raises(ConfigError, match="its arch is 'vit_tiny'"):
        parse_config([*base, "--teacher", str(other)])
    with pytest.raises(SystemExit):  # argparse: --vocab-size must be >= 2
        parse_config([*base, "--teacher", str(other), "--vocab-size", "1"])


@pytest.mark.slow
def test_tiny_teacher_then_bow_run(tiny_data, tmp_path, fastssl_cache):
    common = ["--data", str(tiny_data), "--width", "8", "--image-size", "32", "--batch-size", "16", "--workers", "1",
              "--quiet", "--warmup-epochs", "0.5"]
    teacher = tmp_path / "teacher"
    r = _run(["--method", "denoise", "--epochs", "1", "--eval", "none", "--out", str(teacher), *common])
    assert r.returncode == 0, r.stderr
    out = tmp_path / "bow"
    r = _run(["--method", "bow", "--teacher", str(teacher), "--vocab-size", "16", "--vocab-images", "64",
              "--epochs", "2", "--out", str(out), *common])
    assert r.returncode == 0, r.stderr
    assert len(list((fastssl_cache[0] / "bow").glob("vocab_*.pt"))) == 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert (out / "viz" / "epoch_002.png").is_file() and (out / "eval.json").is_file()
    ck = torch.load(out / "last.pt", weights_only=False)["model"]
    t = torch.load(teacher / "last.pt", weights_only=True)["model"]
    for k, v in t.items():  # the teacher stayed frozen (weights and batch-norm statistics)
        if k.startswith("backbone."):
            assert torch.equal(ck["teacher." + k[len("backbone."):]], v), k
