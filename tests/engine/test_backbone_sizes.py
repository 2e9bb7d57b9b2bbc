"""Sizes a backbone or a method cannot take are refused where the flags are parsed (fastssl issue 22, items 3-4).

Over the whole method x arch grid (in-process ``parse_config``, no training): a size the network refuses is one
ConfigError naming ``--arch`` and the flag, with values that work (each of them then parses, and the real
network takes it); a size that parses is taken by the real network (built and run on the meta device: the
constructors' and forwards' own checks, no memory). The tile methods' too-small images suggest an image size
that works (not ``--tile <= 0``). The command-line cases through ``python -m fastssl.train`` are in
test_cli_errors.py.
"""

import re

import pytest
import torch

from fastssl.base.errors import ConfigError
from fastssl.cli.train import parse_config
from fastssl.methods import METHODS, backbone_kwargs, build_method
from fastssl.methods.bow import stand_in_teacher
from fastssl.models import ARCHS, build_backbone

BAD = 50  # not a multiple of the 4 px patches a ViT gets below 64 px
RESNET_ONLY = {"denoise", "inpaint", "colorize", "bow"}  # decoders / a ResNet teacher
VIT_ONLY = {"mae", "halves"}
_taken: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _extension_loaded():
    """Load fastssl._C (jigsaw / context) from the shared cache before a test points FASTSSL_CACHE at a private
    folder: loaded there first, it would be compiled again (minutes)."""
    from fastssl.ops.sample_tiles import sample_tiles_op

    sample_tiles_op()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """bow's --teacher per arch (a cached random rotation network of that ResNet; a ViT run gets resnet18's)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTSSL_CACHE", str(tmp_path_factory.mktemp("cache")))
        paths = {a: stand_in_teacher({"arch": a, "width": 8, "image_size": BAD})
                 for a in ARCHS if a.startswith("resnet")}
        yield {a: paths.get(a, paths["resnet18"]) for a in ARCHS}


def _args(method, arch, size, teachers, *extra):
    args = ["--method", method, "--arch", arch, "--image-size", str(size), "--width", "8", "--batch-size", "8",
            "--epochs", "1", "--warmup-epochs", "0", *extra]
    return args + (["--teacher", str(teachers[arch])] if method == "bow" else [])


def _network_takes(cfg) -> bool:
    """Whether the real backbone of ``cfg``, built at ``--image-size``, builds and runs on every input the method
    feeds it (``backbone_inputs``), on the meta device (shapes only). Cached per (arch, sizes)."""
    arch, kw = cfg["arch"], backbone_kwargs(cfg["arch"], cfg["image_size"], cfg["width"])
    inputs = tuple(sorted(set(METHODS[cfg["method"]].backbone_inputs(cfg).values())))
    key = (arch, cfg["image_size"], inputs)
    if key not in _taken:
        try:
            with torch.device("meta"):
                net = build_backbone(arch, **kw)
                for s in inputs:
                    net(torch.empty(2, 3, s, s))
            _taken[key] = True
        except ValueError:
            _taken[key] = False
    return _taken[key]


def _suggested(message: str, flag: str) -> list[int]:
    m = re.search(rf"{flag} ((?:\d+)(?: or \d+)*) works", message)
    return [int(v) for v in m.group(1).split(" or ")] if m else []


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_and_arch_checks_the_backbone_where_flags_are_parsed(method, teachers):
    for arch in ARCHS:
        vit = arch.startswith("vit")
        try:
            cfg = parse_config(_args(method, arch, BAD, teachers))
        except ConfigError as e:
            msg = str(e)
            if method in RESNET_ONLY and vit:
                assert msg.startswith(f"--{'teacher' if method == 'bow' else 'arch'} "), msg
                assert "ResNet" in msg, msg
                continue
            if method in VIT_ONLY and not vit:
                assert msg.startswith(f"--arch {arch}: ") and "ViT" in msg, msg
                continue
            # the backbone's own refusal: one line naming --arch and --image-size, the network's reason, sizes
            assert vit and msg.startswith(f"--arch {arch} --image-size {BAD}: "), msg
            assert "img_size (50, 50) is not divisible by patch_size (4, 4)" in msg and "\n" not in msg, msg
            good = _suggested(msg, "--image-size")
            assert good[0] == 48 and (good == [48, 52] or method in ("jigsaw", "context")), msg  # tiles: see below
            for size in range(good[0] + 1, good[-1]):  # the nearest ones: nothing in between parses
                with pytest.raises(ConfigError):
                    parse_config(_args(method, arch, size, teachers))
            for size in good:  # every value offered works: it parses and the real network takes it
                cfg = parse_config(_args(method, arch, size, teachers))
                assert _network_takes(cfg), (method, arch, size)
            assert not _network_takes({**cfg, "image_size": BAD})  # and the refused one really is refused
            continue
        assert not vit and method not in VIT_ONLY, f"{method} {arch} {BAD} px parsed"
        assert _network_takes(cfg), (method, arch)


@pytest.mark.parametrize("method", ["jigsaw", "context"])
def test_a_tile_the_vit_cannot_take_is_refused_with_tiles_that_work(method, teachers):
    # 12 px: the ViT takes the images (4 px patches) but the default tile is 3 px (3/4 of a 4 px cell)
    with pytest.raises(ConfigError) as e:
        parse_config(_args(method, "vit_tiny", 12, teachers))
    msg = str(e.value)
    assert msg.startswith("--arch vit_tiny --tile 3 (its default): input size (3, 3) is not divisible"), msg
    assert _suggested(msg, "--tile") == [4]
    cfg = parse_config(_args(method, "vit_tiny", 12, teachers, "--tile", "4"))
    assert _network_takes(cfg)
    # 200 px: the image itself (16 px patches); the sizes offered fit the default tile too (192: 48 px tiles)
    with pytest.raises(ConfigError, match=r"^--arch vit_tiny --image-size 200: .* --image-size 192 or 256 works$"):
        parse_config(_args(method, "vit_tiny", 200, teachers))
    assert _network_takes(parse_config(_args(method, "vit_tiny", 192, teachers)))
    # a --tile given explicitly: the tiles that work at this image size
    with pytest.raises(ConfigError, match=r"^--arch vit_tiny --tile 6: .*; --tile 4 or 8 works$"):
        parse_config(_args(method, "vit_tiny", 60, teachers, "--tile", "6"))


@pytest.mark.parametrize("method", ["jigsaw", "context"])
@pytest.mark.parametrize("arch,extra,smallest", [
    ("resnet18", [], 3),  # 1 px cells, 1 px tiles
    ("vit_tiny", [], 16),  # 4 px patches: 16 px images have 5 px cells and 4 px default tiles
    ("resnet18", ["--tile", "5"], 15),
])
def test_an_image_too_small_for_the_tiles_names_the_smallest_size_that_works(method, arch, extra, smallest, teachers):
    """Before: `--image-size 2` said `use --tile <= 0`. Now the smallest image size that passes every check, and
    the method is built there and takes a step."""
    with pytest.raises(ConfigError) as e:
        parse_config(_args(method, arch, 2, teachers, *extra))
    msg = str(e.value)
    assert "--tile <= 0" not in msg and msg.startswith("--image-size 2 is too small for a 3x3 grid of tiles"), msg
    assert msg.endswith(f"the smallest --image-size that works with --arch {arch}"
                        f"{' and --tile 5' if extra else ''} is {smallest}"), msg
    for size in range(1, smallest):
        with pytest.raises(ConfigError):
            parse_config(_args(method, arch, size, teachers, *extra))
    cfg = parse_config(_args(method, arch, smallest, teachers, *extra, "--head-hidden", "8",
                             *(["--permutations", "4"] if method == "jigsaw" else [])))
    torch.manual_seed(0)
    m = build_method(method, cfg)
    loss, _ = m([torch.randn(2, 3, smallest, smallest)], torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match=r"no --image-size up to 64 works with --arch vit_tiny and --tile 5"):
        parse_config(_args(method, "vit_tiny", 2, teachers, "--tile", "5"))  # 5 px is never a multiple of a patch


def test_colorize_needs_an_image_its_targets_can_be_pooled_from(teachers):
    for size in (1, 2, 3):
        with pytest.raises(ConfigError, match=rf"^--image-size {size}: colorize .* needs --image-size >= 4$"):
            parse_config(_args("colorize", "resnet18", size, teachers))
    parse_config(_args("colorize", "resnet18", 4, teachers))


def test_mae_refuses_masks_that_hide_no_patch(teachers):
    """MAE's loss is a mean over the masked patches: a mask ratio that rounds to none of them made it 0 / 0 (the
    fused loss returned 0, training nothing)."""
    from fastssl.ops.random_masking import num_keep

    with pytest.raises(ConfigError, match=r"^--mask-ratio 0.01 masks none of the 16 patches .* >= 0.0625$"):
        parse_config(_args("mae", "vit_tiny", 16, teachers, "--mask-ratio", "0.01"))
    cfg = parse_config(_args("mae", "vit_tiny", 16, teachers, "--mask-ratio", "0.0625"))
    assert 16 - num_keep(16, cfg["mask_ratio"]) == 1
    with pytest.raises(ConfigError, match=r"^--image-size 4 is a single 4 px patch: .* e\.g\. --image-size 8$"):
        parse_config(_args("mae", "vit_tiny", 4, teachers))
    parse_config(_args("mae", "vit_tiny", 8, teachers))
    with pytest.raises(ConfigError, match=r"^--arch vit_tiny --image-size 5: .* --image-size 8 works$"):
        parse_config(_args("halves", "vit_tiny", 5, teachers))  # 4 would be one patch: halves refuses it
