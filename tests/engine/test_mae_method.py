"""`python -m fastssl.train --method mae`: a tiny run end to end (run folder, pictures, kNN, AdamW
beta2 0.95), the picture hook's determinism, and flags validated where they are parsed."""

import json

import pytest
import torch
from helpers import pictures_under_reseeded_rng
from helpers import run_train as _run

from fastssl.cli.train import parse_config
from fastssl.methods import build_method


def _tiny(tiny_data, out, *extra):
    return ["--method", "mae", "--data", str(tiny_data), "--image-size", "16", "--batch-size", "16", "--epochs",
            "2", "--workers", "1", "--decoder-depth", "1", "--decoder-dim", "32", "--quiet", "--out", str(out),
            *extra]


def test_tiny_mae_run_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = _run(_tiny(tiny_data, out))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ["config.json", "metrics.jsonl", "last.pt", "eval.json", "viz/epoch_000.png", "viz/epoch_001.png",
                 "viz/epoch_002.png"]:
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert len(losses) == 12 and all(map(lambda v: v == v and v < 10, losses))
    ck = torch.load(out / "last.pt", weights_only=False)
    assert all(g["betas"] == (0.9, 0.95) for g in ck["optimizer"]["param_groups"])
    assert ck["config"]["mask_ratio"] == 0.75 and ck["config"]["norm_pix"] is True
    assert any(k.startswith("decoder.decoder_blocks.0.") for k in ck["model"])
    assert "random init" in r.stdout
    from PIL import Image

    im = Image.open(out / "viz" / "epoch_002.png")
    assert im.width > 4 * 16 and im.height > 16  # 4 columns of 16 px images (scaled)


def test_visualize_is_deterministic_and_keeps_global_rng(tmp_path):
    cfg = parse_config(["--method", "mae", "--image-size", "16", "--decoder-depth", "1", "--decoder-dim", "32"])
    torch.manual_seed(0)
    m = build_method("mae", cfg).eval()
    pa, pb = pictures_under_reseeded_rng(m, [torch.randn(3, 3, 16, 16)], tmp_path, epochs=(0, 1))
    assert pa.read_bytes() == pb.read_bytes()


@pytest.mark.parametrize("flags,needle", [
    (["--mask-ratio", "1.0"], "--mask-ratio"),
    (["--mask-ratio", "0"], "--mask-ratio"),
    (["--mask-ratio", "x"], "--mask-ratio"),
    (["--decoder-dim", "48"], "--decoder-dim"),
    (["--decoder-depth", "0"], "--decoder-depth"),
    (["--arch", "resnet18"], "--arch"),
    (["--image-size", "62"], "--image-size"),  # patch 4 below 64 px: 62 is not a multiple
])
def test_bad_flags_one_line_error(flags, needle, tmp_path):
    out = tmp_path / "run"
    r = _run(["--method", "mae", "--out", str(out), "--epochs", "1", *flags])
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "fastssl.train: error:" in last and needle in last, r.stderr
    assert not out.exists()
