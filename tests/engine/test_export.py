"""Exported backbones (fastssl issue 22, item 1): for every method, ``eval --export`` -> ``load_backbone`` rebuilds the
very network the run's own evaluation uses (``backbone_from_checkpoint``): the same features, bit for bit, at the
run's size and at another one; the file records every constructor argument as built and the input conversion
(colorize's LuminanceInput); what cannot be described is refused in one line; version-1 files still load.

Runs are checkpoints of freshly built (and perturbed) methods, not trained ones: the export describes the network,
whatever its weights, and building is seconds where training is minutes. One case goes through the real
``python -m fastssl.eval --export``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from fastssl.base import checkpoint as ckpt_io
from fastssl.base.errors import DataError
from fastssl.cli import eval as fe
from fastssl.cli.train import parse_config
from fastssl.data import dataset_splits
from fastssl.evaluation import backbone_from_checkpoint, extract_features
from fastssl.evaluation.taps import Taps, tap_names
from fastssl.methods import METHODS, build_method
from fastssl.methods._color import rgb_to_lab
from fastssl.methods.bow import stand_in_teacher
from fastssl.methods.generative import to_pixels
from fastssl.models import (
    ARCHS,
    BasicBlock,
    LuminanceInput,
    ResNet,
    StandardizedInput,
    build_backbone,
    describe_backbone,
    load_backbone,
    save_backbone,
)

SIZE, OTHER_SIZE = 16, 24  # the run's --image-size, and another resolution the features are compared at

# (method, arch, extra flags): every registered method once, plus a ViT with learned position embeddings.
CASES = [
    ("simclr", "resnet18", ["--proj-hidden", "16", "--proj-dim", "8"]),
    ("simclr", "vit_tiny", ["--proj-hidden", "16", "--proj-dim", "8"]),
    ("rotation", "resnet18", ["--head-hidden", "16"]),
    ("jigsaw", "resnet18", ["--head-hidden", "16", "--permutations", "10"]),
    ("context", "resnet18", ["--head-hidden", "16"]),
    ("bow", "resnet18", ["--vocab-size", "4", "--vocab-images", "16", "--kmeans-iters", "2"]),
    ("denoise", "resnet18", []),
    ("inpaint", "resnet18", []),
    ("colorize", "resnet18", []),
    ("mae", "vit_tiny", ["--decoder-dim", "32", "--decoder-depth", "1"]),
    ("halves", "vit_tiny", ["--proj-hidden", "16", "--proj-dim", "8"]),
]


@pytest.fixture(scope="module", autouse=True)
def _extension_loaded():
    """Load fastssl._C (jigsaw / context) from the shared cache before a test points FASTSSL_CACHE at a private
    folder: loaded there first, it would be compiled again (minutes)."""
    from fastssl.ops.sample_tiles import sample_tiles_op

    sample_tiles_op()


def test_the_cases_cover_every_method():
    assert {m for m, _, _ in CASES} == set(METHODS)


def _cfg(method, arch, data, extra):
    args = ["--method", method, "--arch", arch, "--data", str(data), "--width", "8", "--image-size", str(SIZE),
            "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--workers", "1", "--device", "cpu",
            "--quiet", *extra]
    if method == "bow":
        args += ["--teacher", str(stand_in_teacher({"arch": arch, "width": 8, "image_size": SIZE}))]
    return parse_config(args)


def _fake_run(folder, method, arch, data, extra):
    """A run folder whose last.pt holds a freshly built ``method`` with every float tensor perturbed (so the
    weights are not those of any initialization) and the run's config."""
    cfg = _cfg(method, arch, data, extra)
    torch.manual_seed(0)
    m = build_method(method, cfg)
    g = torch.Generator().manual_seed(1)
    state = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v)
             for k, v in m.state_dict().items()}
    folder.mkdir()
    ckpt_io.atomic_save({"model": state, "config": cfg}, folder / "last.pt")
    return cfg


def _same_outputs(a: nn.Module, b: nn.Module, size: int) -> None:
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    assert ya.shape == yb.shape and torch.equal(ya, yb), (size, (ya - yb).abs().max())


@pytest.mark.parametrize("method,arch,extra", CASES, ids=[f"{m}-{a}" for m, a, _ in CASES])
def test_export_rebuilds_the_runs_evaluated_network(method, arch, extra, tiny_data, tmp_path, fastssl_cache):
    run = tmp_path / "run"
    _fake_run(run, method, arch, tiny_data, extra)
    evaluated, cfg = fe._load(str(run))  # = backbone_from_checkpoint(run): what the run's evaluation uses
    path = tmp_path / "backbone.safetensors"
    fe._export(evaluated, cfg, str(path))  # what `eval --export` writes
    model, meta = load_backbone(path)

    # The file holds every constructor argument as built (read back from the module, not re-derived).
    spec = describe_backbone(evaluated)
    assert (meta["version"], meta["arch"], meta["kwargs"], meta["input"]) == ("2", arch, spec["kwargs"],
                                                                               spec["input"])
    assert spec["kwargs"] == (evaluated.net if spec["input"] != "rgb" else evaluated).config()
    assert (meta["method"], meta["image_size"], meta["feature_dim"]) == (method, SIZE, evaluated.feature_dim)
    if method in ("mae", "halves"):
        assert (meta["kwargs"]["pool"], meta["kwargs"]["pos_embed"]) == ("mean", "sincos")
    if method == "colorize":
        assert meta["input"] == "luminance" and meta["kwargs"]["in_chans"] == 1 and isinstance(model, LuminanceInput)
    if method in ("jigsaw", "context"):  # --tile-norm input (their default): the standardization is rebuilt too
        assert meta["input"] == "standardized" and isinstance(model, StandardizedInput)

    # Bit for bit the same features: the evaluation's own extraction, a forward at the run's size and at another
    # (a ViT's position embedding is then recomputed (sin-cos) or interpolated (learned), as the run's would be).
    val_src = dataset_splits(tiny_data)[1]
    kw = dict(image_size=SIZE, device=torch.device("cpu"), batch_size=64, num_threads=1)
    f_eval, y_eval = extract_features(evaluated, val_src, **kw)
    f_exp, y_exp = extract_features(model, val_src, **kw)
    assert torch.equal(y_eval, y_exp) and torch.equal(f_eval, f_exp)
    for size in (SIZE, OTHER_SIZE):
        _same_outputs(model, evaluated, size)
    names = tap_names(evaluated)
    assert tap_names(model) == names
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        ta, tb = Taps(model.eval(), names)(x), Taps(evaluated.eval(), names)(x)
    assert all(torch.equal(ta[n], tb[n]) for n in names)


def test_every_arch_describes_itself_and_rebuilds_from_its_config():
    for arch in ARCHS:
        for kw in ({}, {"num_classes": 5}) if arch.startswith("resnet") else (
                {"img_size": 32, "patch_size": 8}, {"img_size": [32, 48], "patch_size": 8, "pool": "mean",
                                                    "pos_embed": "sincos", "drop_path_rate": 0.1}):
            with torch.device("meta"):  # shapes only: vit_base is 86M parameters
                net = build_backbone(arch, **kw)
                spec = describe_backbone(net)
                again = build_backbone(spec["arch"], **spec["kwargs"])
            assert spec["arch"] == arch and spec["input"] == "rgb"
            assert all(spec["kwargs"][k] == v for k, v in kw.items())
            assert json.loads(json.dumps(spec["kwargs"])) == spec["kwargs"]  # plain data
            shapes = {k: v.shape for k, v in net.state_dict().items()}
            assert {k: v.shape for k, v in again.state_dict().items()} == shapes
            assert describe_backbone(again) == spec


def test_the_luminance_input_is_the_colorize_L_channel_bit_for_bit():
    x = torch.randn(4, 3, 9, 7) * 1.5  # normalized views, some pixels outside [0, 1] (clamped)
    want = (rgb_to_lab(to_pixels(x.float()).clamp(0, 1))[:, :1] - 50) / 50  # what colorize computed before
    assert torch.equal(LuminanceInput.luminance(x), want)
    x64 = x.double()
    want64 = (rgb_to_lab(to_pixels(x64).clamp(0, 1))[:, :1] - 50) / 50
    got = LuminanceInput.luminance(x64)
    assert got.dtype == torch.float32 and (got.double() - want64).abs().max() <= 1e-5 * want64.abs().max()


def test_what_cannot_be_described_is_refused_and_nothing_written(tmp_path):
    net = build_backbone("resnet18", width=8, cifar_stem=True)
    cases = [
        (nn.Sequential(net), "neither a ResNet nor a ViT"),
        (build_backbone("resnet18", width=8, fc=nn.Linear(64, 3)), "custom fc"),
    ]
    later = build_backbone("resnet18", width=8)
    later.fc = nn.Linear(64, 3)  # changed after it was built: the description no longer rebuilds it
    cases.append((later, "differ from those of the network its description builds"))
    cases.append((ResNet(BasicBlock, [1, 1, 1, 1], width=8), "not built by a builder"))
    for model, said in cases:
        with pytest.raises(ValueError, match=said):
            save_backbone(model, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="kwargs .* disagree"):
        save_backbone(net, tmp_path / "x.safetensors", "resnet18", {"width": 16})
    with pytest.raises(ValueError, match="arch 'resnet50' given"):
        save_backbone(net, tmp_path / "x.safetensors", "resnet50", {})
    cfg = {"method": "simclr", "arch": "resnet18", "image_size": 16}
    with pytest.raises(DataError, match=r"^--export: the simclr backbone cannot be exported: .*neither a ResNet"):
        fe._export(nn.Sequential(net), cfg, str(tmp_path / "x.safetensors"))
    assert list(tmp_path.iterdir()) == []


def _v1_file(path, backbone, arch, kwargs, method):
    """A file as the version-1 writer made it (before issue 22): kwargs from the run config's backbone_kwargs."""
    header = {"format": "fastssl-backbone", "version": "1", "arch": arch, "kwargs": json.dumps(kwargs, sort_keys=True),
              "feature_dim": str(backbone.feature_dim), "image_size": str(SIZE), "method": method,
              "mean": "[0.485, 0.456, 0.406]", "std": "[0.229, 0.224, 0.225]", "data": "null"}
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(path), metadata=header)


@pytest.mark.parametrize("method,arch,extra,filled", [
    ("simclr", "resnet18", ["--proj-hidden", "16", "--proj-dim", "8"], []),  # v1 described it fully: as before
    ("simclr", "vit_tiny", ["--proj-hidden", "16", "--proj-dim", "8"], []),
    ("mae", "vit_tiny", ["--decoder-dim", "32"], ["pool", "pos_embed"]),
    ("colorize", "resnet18", [], ["in_chans", "input"]),
])
def test_version_1_files_still_load(method, arch, extra, filled, tiny_data, tmp_path, fastssl_cache):
    from fastssl.methods import backbone_kwargs

    cfg = _cfg(method, arch, tiny_data, extra)
    torch.manual_seed(0)
    backbone = build_method(method, cfg).backbone
    path = tmp_path / "v1.safetensors"
    _v1_file(path, backbone, arch, backbone_kwargs(arch, SIZE, 8), method)
    model, meta = load_backbone(path)
    assert meta["version"] == "1" and meta["filled_in"] == filled
    for size in (SIZE, OTHER_SIZE):
        _same_outputs(model, backbone, size)
    # An unknown method (or none) in a v1 file: the constructors' defaults, exactly as the v1 loader did.
    if method == "mae":
        _v1_file(path, backbone, arch, backbone_kwargs(arch, SIZE, 8), "unknown")
        model, meta = load_backbone(path)
        assert meta["filled_in"] == [] and (model.pool, model.pos_embed_type) == ("cls", "learned")


def test_newer_format_versions_and_unknown_inputs_are_one_line_errors(tmp_path):
    net = build_backbone("resnet18", width=8, cifar_stem=True)
    path = save_backbone(net, tmp_path / "b.safetensors")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    state = load_file(str(path))
    save_file(state, str(tmp_path / "v9.safetensors"), metadata={**header, "version": "9"})
    with pytest.raises(DataError, match="format version '9'; this fastssl reads versions 1 and 2"):
        load_backbone(tmp_path / "v9.safetensors")
    save_file(state, str(tmp_path / "odd.safetensors"), metadata={**header, "input": "hsv"})
    with pytest.raises(DataError, match="input conversion 'hsv'"):
        load_backbone(tmp_path / "odd.safetensors")


def test_mae_export_through_the_real_command(tiny_data, tmp_path, fastssl_cache):
    """`python -m fastssl.eval knn --checkpoint RUN --export X` of an MAE run: X rebuilds the mean-pooled, sin-cos
    encoder the run evaluates (before issue 22 it rebuilt a cls-token ViT: features 1.42 apart, no warning)."""
    run = tmp_path / "run"
    _fake_run(run, "mae", "vit_tiny", tiny_data, ["--decoder-dim", "32"])
    path = tmp_path / "mae.safetensors"
    r = subprocess.run([sys.executable, "-m", "fastssl.eval", "knn", "--checkpoint", str(run), "--export", str(path),
                        "--workers", "1", "--k", "5"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0 and "knn: top-1" in r.stdout, r.stderr[-2000:]
    model, meta = load_backbone(path)
    evaluated, _ = backbone_from_checkpoint(run)
    for size in (SIZE, OTHER_SIZE):
        _same_outputs(model, evaluated, size)
    assert meta["kwargs"]["pool"] == "mean" and meta["kwargs"]["pos_embed"] == "sincos"
