"""ImageNet presets: one per registered method, every number sourced, each parses and builds at full size,
and ``--config`` finds them by name (installed package) or by path (source checkout)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fastssl.base.errors import ConfigError
from fastssl.cli.presets import PRESETS_DIR, list_presets, preset_path, resolve_config
from fastssl.cli.train import parse_config
from fastssl.data import make_loader
from fastssl.methods import METHODS, build_method
from fastssl.methods.bow import stand_in_teacher

ROOT = Path(__file__).resolve().parents[2]


def _preset_argv(method, data, *extra):
    argv = ["--config", f"imagenet/{method}", "--data", str(data), *extra]
    if method == "bow":  # a preset cannot name a teacher: a randomly initialized RotNet of the same arch
        argv += ["--teacher", str(stand_in_teacher({"arch": "resnet50", "width": 64, "image_size": 224}))]
    return argv


def test_every_registered_method_has_an_imagenet_preset():
    # A method added to the registry without configs/imagenet/<method>.yaml fails here.
    missing = [m for m in sorted(METHODS) if preset_path(f"imagenet/{m}") is None]
    assert not missing, f"no ImageNet preset for {missing}: add fastssl/configs/imagenet/<method>.yaml"
    assert {p.split("/")[1] for p in list_presets() if p.startswith("imagenet/")} == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_value_has_its_source_on_its_line(method):
    text = preset_path(f"imagenet/{method}").read_text()
    data = yaml.safe_load(text)
    assert data["method"] == method
    for line in text.splitlines():
        m = re.match(r"^\s*([a-z_]+):\s*(\S.*)$", line)
        if m and m.group(1) not in ("method", "recipe_options") and not m.group(2).startswith("#"):
            assert "#" in line, f"{method}.yaml: {m.group(1)} has no source comment: {line!r}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_parses_with_its_values(method, imagenet_like, fastssl_cache):
    cfg = parse_config(_preset_argv(method, imagenet_like))
    file_values = yaml.safe_load(preset_path(f"imagenet/{method}").read_text())
    for key, value in file_values.items():
        got = cfg[key]
        if key == "recipe_options":
            assert got == value
        else:
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, key


# The full-size builds: the real backbone (ResNet-50 / ViT-B) and heads, and one batch of the real DALI
# pipeline at the preset's view size. bow's vocabulary is cut to 8 words here (the preset's 20,000 need
# 20,000 teacher features, i.e. ~100 images, and minutes of k-means on a CPU).
@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_builds_its_full_size_model_and_pipeline(method, imagenet_like, fastssl_cache):
    extra = ["--vocab-size", "8", "--vocab-images", "8"] if method == "bow" else []
    cfg = parse_config(_preset_argv(method, imagenet_like, *extra))
    torch.manual_seed(0)
    model = build_method(method, cfg)
    assert cfg["arch"] in ("resnet50", "vit_base")
    n_params = sum(p.numel() for p in model.backbone.parameters())
    assert n_params > 20e6, n_params  # ResNet-50: 23.5M, ViT-B: 86M (not a reduced model)
    from fastssl.data import dataset_splits

    with pytest.warns(UserWarning, match="hold no image files"):  # the generated folder is sparse by design
        train, _ = dataset_splits(imagenet_like)
    loader = make_loader(train, model.recipe, batch_size=2, epoch=0, image_size=cfg["image_size"], num_threads=1,
                         recipe_options={**model.recipe_options(), **(cfg["recipe_options"] or {})})
    views, labels = next(iter(loader))
    s = cfg["image_size"]
    assert all(v.shape[0] == 2 and v.shape[1:] == (3, s, s) for v in views), [v.shape for v in views]


def _run(args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastssl.train", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600, cwd=cwd)


def test_config_finds_presets_by_name_and_by_repo_path(tmp_path, imagenet_like):
    by_name = resolve_config("imagenet/simclr")
    assert by_name == PRESETS_DIR / "imagenet" / "simclr.yaml"
    assert resolve_config("imagenet/simclr.yaml") == by_name
    assert resolve_config("configs/imagenet/simclr.yaml").resolve() == by_name  # a checkout's path, any cwd
    assert (ROOT / "configs" / "imagenet" / "simclr.yaml").resolve() == by_name  # the repo-root link
    own = tmp_path / "mine.yaml"
    own.write_text("method: rotation\nepochs: 3\n")
    assert resolve_config(str(own)) == own  # an existing file wins
    assert parse_config(["--config", str(own), "--data", str(imagenet_like)])["epochs"] == 3
    with pytest.raises(ConfigError, match="imagenet/simclr"):
        resolve_config("imagenet/nosuch")
    assert preset_path("../../../../../../etc/passwd") is None  # names stay inside the packaged presets


def test_cli_help_and_preset_errors_are_one_line(tmp_path):
    r = _run(["--config", "imagenet/nosuch", "--help"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("fastssl.train: error: --config: file not found")
    r = _run(["--config", "configs/imagenet/simclr.yaml", "--help"], cwd=ROOT)
    assert r.returncode == 0 and "--temperature" in r.stdout
