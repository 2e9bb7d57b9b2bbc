"""Per-layer taps: names and widths for every arch and image size, one forward pass, the documented
pooling, a planted check (the label only at layer2, or only at the pooled output), the table."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastssl.evaluation.knn import knn_classify
from fastssl.evaluation.layers import format_table
from fastssl.evaluation.taps import Taps, default_taps, pooled_side, tap_names, trunk
from fastssl.methods.base import backbone_kwargs
from fastssl.models import build_backbone

CASES = [("resnet18", 16, 8), ("resnet18", 32, 16), ("resnet18", 64, 16), ("resnet50", 64, 8), ("resnet18", 224, 64),
         ("vit_tiny", 32, 0), ("vit_tiny", 64, 0), ("vit_small", 48, 0)]


def _backbone(arch, size, width):
    torch.manual_seed(0)
    return build_backbone(arch, **backbone_kwargs(arch, size, width or 16)).eval()


def _expected_widths(arch, size, width, backbone):
    """Independent of fastssl.evaluation.taps: the stage maps by running the trunk by hand."""
    x = torch.randn(2, 3, size, size)
    if arch.startswith("resnet"):
        t = backbone
        maps = {}
        y = t.maxpool(t.relu(t.bn1(t.conv1(x))))
        maps["stem"] = y
        for i in range(1, 5):
            y = getattr(t, f"layer{i}")(y)
            maps[f"layer{i}"] = y
        out = {k: v.shape[1] * min(v.shape[2], math.isqrt(9216 // v.shape[1])) ** 2 for k, v in maps.items()}
        out["pool"] = t.feature_dim
        return x, out
    d = backbone.embed_dim
    depth = len(backbone.blocks)
    names = sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)})
    return x, {**{f"block{k}": 2 * d for k in names}, "norm": 2 * d, "pool": d}


@pytest.mark.parametrize("arch,size,width", CASES)
def test_tap_names_and_widths_for_every_arch(arch, size, width):
    b = _backbone(arch, size, width)
    x, want = _expected_widths(arch, size, width, b)
    assert tap_names(b) == list(want)
    with torch.no_grad():
        got = Taps(b, tap_names(b))(x)
        assert torch.equal(got["pool"], b(x))  # the pooled tap is exactly what kNN evaluated before taps
    assert {k: v.shape for k, v in got.items()} == {k: (2, w) for k, w in want.items()}
    assert all(v.dtype == torch.float32 for v in got.values())


def test_resnet_taps_are_the_stage_maps_average_pooled():
    b = _backbone("resnet18", 64, 16)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        got = Taps(b, ["layer2", "layer3"])(x)
        y2 = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
        y3 = b.layer3(y2)
    assert torch.allclose(got["layer2"], F.adaptive_avg_pool2d(y2, 8).flatten(1), atol=1e-6)
    assert torch.allclose(got["layer3"], y3.flatten(1), atol=1e-6)  # 64 x 4 x 4: the whole map


def test_vit_block_tap_is_cls_and_patch_mean_after_that_block():
    b = _backbone("vit_tiny", 32, 0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = Taps(b, ["block3"])(x)
        tokens = b.patch_embed(x)
        tokens = torch.cat([b.cls_token.expand(2, -1, -1), tokens], 1) + b._pos_embed_for(b.patch_embed.grid_size)
        for blk in b.blocks[:3]:
            tokens = blk(tokens)
    want = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1)
    assert torch.allclose(got["block3"], want, atol=1e-5 * want.abs().max().item())


def test_pooled_side_reproduces_vissls_widths_for_resnet50_at_224():
    # VISSL: res2 9216, res3 8192, res4 9216, res5 8192 (ResNet-50 at 224 px)
    assert [c * pooled_side(c, s) ** 2 for c, s in ((256, 56), (512, 28), (1024, 14), (2048, 7))] == \
        [9216, 8192, 9216, 8192]


def test_unknown_taps_and_wrapped_backbones():
    b = _backbone("resnet18", 32, 8)
    with pytest.raises(ValueError, match="unknown tap.*layer9.*stem, layer1"):
        Taps(b, ["layer9"])

    class Wrapper(nn.Module):  # as colorize's LuminanceInput: the trunk sits inside
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x * 2)

    w = Wrapper(b)
    assert trunk(w) is b and tap_names(w) == tap_names(b)
    with torch.no_grad():
        assert torch.equal(Taps(w, ["pool"])(torch.ones(1, 3, 32, 32))["pool"], b(torch.full((1, 3, 32, 32), 2.0)))
    with pytest.raises(ValueError, match="no ResNet"):
        tap_names(nn.Linear(2, 2))
    assert default_taps(b, "intermediate") == ["layer1", "layer2", "layer3", "layer4", "pool"]
    assert default_taps(b, "output") == ["layer4", "pool"]
    v = _backbone("vit_tiny", 32, 0)
    assert default_taps(v, "intermediate") == ["block3", "block6", "block9", "block12", "pool"]
    assert default_taps(v, "output") == ["norm", "pool"]


class _Planted(nn.Module):
    """A 'ResNet' of 4 channels whose stages are chosen so that the label is at one tap only."""

    def __init__(self, where: str):
        super().__init__()
        from fastssl.models import resnet18

        self.net = resnet18(width=4, cifar_stem=True)
        t = self.net
        t.conv1, t.bn1, t.relu, t.maxpool, t.layer1 = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity(), \
            nn.Identity()
        if where == "layer2":
            # images carry the label as left-vs-right brightness (equal global means): every spatial tap
            # sees it, a global average pool does not; layer3/4 keep the map as it is.
            t.layer2 = t.layer3 = t.layer4 = nn.Identity()
        else:
            # the label is the global brightness; layer2 buries it under label-free noise 1e6 times larger,
            # layer3 digs it back out (so layer3/4 and the global pool carry it, layer2 does not).
            t.layer2 = _Bury()
            t.layer3 = _Dig()
            t.layer4 = nn.Identity()

    def forward(self, x):
        return self.net(x)


class _Bury(nn.Module):
    def forward(self, x):
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(x.sum().abs() * 1e3) % 2**31))
        return torch.cat([noise * 1e3, x * 1e-3], 1)


class _Dig(nn.Module):
    def forward(self, x):
        return x[:, x.shape[1] // 2:] * 1e3


def _images(n, where, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 4, 8, 8, generator=g) * 0.1
    if where == "layer2":
        sign = (2 * y - 1).float().view(n, 1, 1, 1)
        x[..., :4] += sign
        x[..., 4:] -= sign
    else:
        x += y.float().view(n, 1, 1, 1)
    return x, y


@pytest.mark.parametrize("where", ["layer2", "pool"])
def test_planted_label_is_found_at_its_tap_only(where):
    m = _Planted(where).eval()
    names = ["layer2", "pool"]
    taps = Taps(m, names)
    (xtr, ytr), (xva, yva) = _images(200, where, 0), _images(100, where, 1)
    with torch.no_grad():
        ftr, fva = taps(xtr), taps(xva)
    acc = {n: knn_classify(ftr[n], ytr, fva[n], yva, k=5, num_classes=2)["top1"] for n in names}
    other = "pool" if where == "layer2" else "layer2"
    assert acc[where] >= 95.0 and acc[other] <= 65.0, acc


def test_format_table_marks_the_best_tap_and_shows_gains():
    res = {"protocol": "knn", "best": "layer2", "taps": {
        "layer2": {"width": 2048, "learned": {"top1": 55.0, "top5": 90.0}, "random_init": {"top1": 35.0, "top5": 80.0}},
        "pool": {"width": 128, "learned": {"top1": 32.2, "top5": 70.0}}}}
    lines = format_table(res).splitlines()
    assert lines[2].startswith("* layer2") and "+20.00" in lines[2] and "55.00 /  90.00" in lines[2]
    assert lines[3].startswith("  pool") and lines[3].rstrip().endswith("-")
