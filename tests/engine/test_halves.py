"""`--method halves` (complementary masked halves, fastssl's own pretext task): the mask construction
against a plain-Python reference, the fused loss path against the reference ops, the picture hook,
bad flags through the real CLI, and a tiny end-to-end run through ``python -m fastssl.train``."""

import json

import pytest
import torch
from helpers import pictures_under_reseeded_rng
from helpers import run_train as _run

from fastssl.cli.train import parse_config
from fastssl.methods import build_method
from fastssl.methods.halves import complementary_masks, complementary_masks_ref, keep_count
from fastssl.ops import random_masking


def _tiny(data, out, *extra):
    return ["--method", "halves", "--data", str(data), "--image-size", "16", "--batch-size", "16", "--epochs", "2",
            "--workers", "1", "--proj-hidden", "32", "--proj-dim", "16", "--warmup-epochs", "0.5", "--quiet",
            "--out", str(out), *extra]


def _method(*extra):
    torch.manual_seed(0)
    return build_method("halves", parse_config(["--method", "halves", "--image-size", "16", "--proj-hidden", "32",
                                                "--proj-dim", "16", *extra]))


@pytest.mark.parametrize("batch,n,keep", [(1, 16, 0.5), (3, 64, 0.5), (5, 64, 0.25), (4, 15, 0.5), (2, 9, 0.2),
                                          (3, 2, 0.5)])
def test_complementary_masks_match_the_plain_reference(batch, n, keep):
    g = torch.Generator().manual_seed(7)
    (ids1, restore1, mask1), (ids2, restore2, mask2) = complementary_masks(batch, n, keep, generator=g)
    k = keep_count(n, keep)
    # The same draws, replayed: set 1, then the second draw over the complement (none when 2K = L).
    g2 = torch.Generator().manual_seed(7)
    ref1, ref_restore1, ref_mask1 = random_masking(batch, n, (n - k) / n, generator=g2)
    sub = None if 2 * k == n else random_masking(batch, n - k, (n - 2 * k) / (n - k), generator=g2)[0].tolist()
    ref_ids2, ref_mask2, ref_restore2 = complementary_masks_ref(ref1.tolist(), sub, n)
    assert torch.equal(ids1, ref1) and torch.equal(restore1, ref_restore1) and torch.equal(mask1, ref_mask1)
    assert ids2.tolist() == ref_ids2 and mask2.tolist() == ref_mask2 and restore2.tolist() == ref_restore2
    # The properties the task relies on: K each, disjoint, complementary when 2K = L.
    assert ids1.shape == ids2.shape == (batch, k)
    assert ((1 - mask1) * (1 - mask2)).sum() == 0
    assert ((1 - mask2).sum(1) == k).all()
    if 2 * k == n:
        assert torch.equal(mask1 + mask2, torch.ones(batch, n))


def test_complementary_masks_bad_arguments():
    with pytest.raises(ValueError, match="keep"):
        complementary_masks(2, 16, 0.6)
    with pytest.raises(ValueError, match="patches"):
        complementary_masks(2, 1, 0.5)


@pytest.mark.parametrize("extra", [[], ["--recon-weight", "0.5", "--decoder-dim", "32", "--keep", "0.25"]])
def test_fused_loss_and_gradients_match_the_reference_ops(extra):
    m = _method(*extra).double()
    views = [torch.randn(3, 3, 16, 16, dtype=torch.float64), torch.randn(3, 3, 16, 16, dtype=torch.float64)]
    masks = complementary_masks(3, m.num_patches, m.keep, generator=torch.Generator().manual_seed(1))
    grads = []
    for fused in (True, False):
        m.zero_grad()
        loss, metrics = m.losses(views, masks, fused=fused)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (lf, gf), (lr, gr) = grads
    assert torch.isfinite(lf) and abs(lf - lr) <= 1e-9 * abs(lr)
    assert gf.keys() == gr.keys() and len(gf) > 10
    overall = max(g.abs().max() for g in gr.values())
    assert overall > 1e-3
    for name in gf:  # relative to the parameter's own gradient, plus fp64 round-off of the largest one
        # (some are exactly 0 in theory, e.g. the final norm's bias: the projector's BatchNorm removes a shift)
        bound = 1e-7 * gr[name].abs().max() + 1e-12 * overall
        assert (gf[name] - gr[name]).abs().max() <= bound, name
    if "--recon-weight" in extra:
        assert "recon" in metrics and any(n.startswith("decoder.") for n in gf)


def test_the_encoder_never_sees_the_other_half():
    m = _method().eval()
    x = torch.randn(2, 3, 16, 16)
    masks = complementary_masks(2, m.num_patches, 0.5, generator=torch.Generator().manual_seed(3))
    z1, _, _ = m.embed_halves([x, x], masks)
    # Change only the pixels of the patches hidden from view 1: its embedding stays the same.
    p = m.patch_size
    hidden = masks[0][2].view(2, 1, 16 // p, 16 // p).repeat_interleave(p, 2).repeat_interleave(p, 3)
    x2 = x + hidden * torch.randn_like(x)
    z1b, z2b, _ = m.embed_halves([x2, x2], masks)
    assert torch.allclose(z1, z1b, atol=1e-6)
    assert not torch.allclose(m.embed_halves([x, x], masks)[1], z2b, atol=1e-3)


def test_forward_is_reproducible_from_the_global_seed():
    m = _method()
    views = [torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)]
    torch.manual_seed(5)
    a, _ = m(views, None)
    torch.manual_seed(5)
    b, _ = m(views, None)
    assert torch.equal(a, b) and a > 0


def test_visualize_is_deterministic_and_keeps_global_rng(tmp_path):
    m = _method().eval()
    views = [torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    pa, pb, pc = pictures_under_reseeded_rng(m, views, tmp_path, epochs=(0, 0, 1))
    assert pa.read_bytes() == pb.read_bytes()  # same masks, same picture
    assert pc.is_file()
    from PIL import Image

    a, b = Image.open(pa), Image.open(pb)
    assert a.size == b.size and a.width > 4 * 16 and a.height > 3 * 16


@pytest.mark.parametrize("flags,needle", [
    (["--keep", "0.6"], "--keep"),
    (["--keep", "0"], "--keep"),
    (["--temperature", "0"], "--temperature"),
    (["--recon-weight", "-1"], "--recon-weight"),
    (["--decoder-dim", "48"], "--decoder-dim"),
    (["--arch", "resnet18"], "--arch"),
    (["--batch-size", "1"], "--batch-size"),
    (["--image-size", "62"], "--image-size"),
    (["--image-size", "4"], "--image-size 4 gives one 4 px patch"),  # one patch cannot be split in two
])
def test_bad_flags_one_line_error(flags, needle, tmp_path):
    out = tmp_path / "run"
    r = _run(["--method", "halves", "--out", str(out), "--epochs", "1", *flags])
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "fastssl.train: error:" in last and needle in last, r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_tiny_halves_run_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = _run(_tiny(tiny_data, out))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ["config.json", "metrics.jsonl", "last.pt", "eval.json", "viz/epoch_000.png", "viz/epoch_002.png"]:
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 12 and all(0 < x["loss"] < 10 and 0 <= x["match"] <= 1 for x in steps)
    ev = json.loads((out / "eval.json").read_text())
    assert 0 <= ev["learned"]["top1"] <= 100 and 0 <= ev["random_init"]["top1"] <= 100
    ck = torch.load(out / "last.pt", weights_only=False)
    assert ck["config"]["keep"] == 0.25 and all(g["betas"] == (0.9, 0.95) for g in ck["optimizer"]["param_groups"])
