"""--dry-run N through the real `python -m fastssl.train`: every method's preset for 2 steps at reduced size
on the CPU, its printed numbers, no run folder left behind (or --out kept), and the generated data."""

import json
import os
import subprocess
import sys

import pytest

from fastssl.data.synthetic import imagenet_like_root
from fastssl.methods import METHODS

# Reduced sizes for a 2-core CPU (the preset's other values stay): a small backbone at 64 px. A method not
# listed gets DEFAULT; one that needs more (a ViT, smaller tiles, a small vocabulary) is listed.
DEFAULT = ["--arch", "resnet18", "--width", "8", "--image-size", "64"]
REDUCED = {
    "mae": ["--arch", "vit_tiny", "--image-size", "64", "--decoder-depth", "1", "--decoder-dim", "64"],
    "halves": ["--arch", "vit_tiny", "--image-size", "64", "--proj-hidden", "32", "--proj-dim", "16"],
    "jigsaw": [*DEFAULT, "--tile", "16", "--permutations", "10", "--head-hidden", "32"],
    "context": [*DEFAULT, "--tile", "16", "--head-hidden", "32"],
    "bow": [*DEFAULT, "--vocab-size", "8", "--vocab-images", "8"],
    "simclr": [*DEFAULT, "--proj-hidden", "32", "--proj-dim", "16"],
}
FAST = {"simclr", "rotation"}  # the rest are marked slow (each ~20-60 s on a loaded 2-core machine)


def _run(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "2", "TMPDIR": str(cwd), **(env or {})},
                          timeout=900)


def _result(r):
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["dry_run"]


@pytest.mark.parametrize("method", [pytest.param(m, marks=[] if m in FAST else [pytest.mark.slow])
                                    for m in sorted(METHODS)])
def test_dry_run_of_every_preset_for_two_steps(method, imagenet_like, tmp_path):
    args = ["--config", f"imagenet/{method}", "--data", imagenet_like, "--dry-run", "2", "--dry-run-batch", "2",
            "--workers", "1", *REDUCED.get(method, DEFAULT)]
    r = _run(args, tmp_path)
    res = _result(r)
    assert res["method"] == method and res["steps"] == 2 and len(res["step_s"]) == 2
    assert res["step_batch_size"] == 2 and res["config_batch_size"] > 2
    assert "SMALLER than the config's" in r.stdout and "--dry-run-batch 2" in r.stdout  # said plainly
    assert all(s > 0 for s in res["step_s"]) and res["img_per_s"] == pytest.approx(2 / res["mean_step_s"])
    assert all(x == x for x in res["loss"])  # finite
    assert res["peak_rss_gib"] > 0.1 and res["peak_cuda_gib"] is None
    assert "projection at this rate (not a measurement" in r.stdout
    left = [n for n in os.listdir(tmp_path) if n == "runs" or n.startswith("fastssl-dryrun-")]
    assert left == [], left  # no run folder, no temporary run folder left (cwd and TMPDIR are tmp_path)


def test_dry_run_out_keeps_the_folder_and_cpu_caps_the_batch(imagenet_like, tmp_path):
    out = tmp_path / "kept"
    r = _run(["--config", "imagenet/rotation", "--data", imagenet_like, "--dry-run", "1", "--workers", "1",
              *DEFAULT, "--out", out], tmp_path)
    res = _result(r)
    assert res["step_batch_size"] == 8 and res["config_batch_size"] == 192  # CPU: at most 8 per step, said so
    assert "on a CPU the dry run measures at most 8" in r.stdout
    assert res["timed_steps"] == "1-1"
    assert json.loads((out / "dryrun.json").read_text())["step_batch_size"] == 8
    assert (out / "config.json").is_file() and not (out / "last.pt").exists()
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1] and steps[0]["dry_run"] is True


def test_dry_run_refuses_resume(tmp_path):
    r = _run(["--method", "rotation", "--dry-run", "1", "--resume", "auto", "--out", tmp_path / "x"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == "fastssl.train: error: --dry-run times a freshly built model: drop --resume"


def test_generated_folder_is_imagenet_shaped_and_cached(tmp_path):
    from PIL import Image

    root = imagenet_like_root(n_images=12, n_classes=1000, cache=tmp_path, progress=False)
    classes = sorted(os.listdir(root / "train"))
    assert len(classes) == 1000 and classes[0] == "n00000000"
    files = [f for c in classes for f in os.listdir(root / "train" / c)]
    assert len(files) == 12
    c0 = next(c for c in classes if os.listdir(root / "train" / c))
    with Image.open(root / "train" / c0 / os.listdir(root / "train" / c0)[0]) as im:
        assert im.size == (500, 375) and im.format == "JPEG"
    mtime = (root / "COMPLETE.json").stat().st_mtime_ns
    assert imagenet_like_root(n_images=12, n_classes=1000, cache=tmp_path, progress=False) == root
    assert (root / "COMPLETE.json").stat().st_mtime_ns == mtime  # not generated twice
