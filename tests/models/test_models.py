"""fastssl.models: shapes, parameter counts, torchvision/timm key names, options, gradients, errors.

Kept small for a loaded 2-core CPU: parameter counts are taken on the meta device (no allocation,
no init), forward passes use small widths / depths and 32-64 px images.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastssl.models import (
    ARCHS,
    LinearHead,
    MLPHead,
    PatchEmbed,
    build_backbone,
    resnet18,
    resnet50,
    to_channels_last,
    vit_base,
    vit_small,
    vit_tiny,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# parameter counts: the published torchvision / timm numbers
# --------------------------------------------------------------------------------------------------

KNOWN_COUNTS = [
    # torchvision.models.resnet18 / resnet50 (num_classes=1000)
    (resnet18, dict(num_classes=1000), 11_689_512),
    (resnet50, dict(num_classes=1000), 25_557_032),
    # timm vit_{tiny,small,base}_patch16_224 (num_classes=1000, cls pooling)
    (vit_tiny, dict(num_classes=1000), 5_717_416),
    (vit_small, dict(num_classes=1000), 22_050_664),
    (vit_base, dict(num_classes=1000), 86_567_656),
    # feature extractors: minus the classifier (fc: 512*1000+1000, 2048*1000+1000; head: 768*1000+1000)
    (resnet18, dict(), 11_689_512 - 513_000),
    (resnet50, dict(), 25_557_032 - 2_049_000),
    (vit_base, dict(), 86_567_656 - 769_000),
]


@pytest.mark.parametrize("builder,kw,expected", KNOWN_COUNTS,
                         ids=[f"{b.__name__}-{k.get('num_classes', 0)}" for b, k, _ in KNOWN_COUNTS])
def test_parameter_counts_match_reference_implementations(builder, kw, expected):
    with torch.device("meta"):
        model = builder(**kw)
    assert n_params(model) == expected


def test_vit_parameter_count_depends_on_patch_and_image_size():
    with torch.device("meta"):
        base = vit_tiny(img_size=224, patch_size=16)
        small = vit_tiny(img_size=32, patch_size=4)
        sincos = vit_tiny(img_size=224, patch_size=16, pos_embed="sincos")
    d = 192
    # patch projection 3*p*p*d (+d bias) and (1 + N) * d position embedding
    assert n_params(base) - n_params(small) == 3 * (256 - 16) * d + (197 - 65) * d
    assert n_params(base) - n_params(sincos) == 197 * d  # fixed embedding is a buffer, not trained


# --------------------------------------------------------------------------------------------------
# torchvision key names
# --------------------------------------------------------------------------------------------------

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _torchvision_resnet18_keys() -> list[str]:
    """The state-dict keys of torchvision.models.resnet18(), written out from its definition."""
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in _BN]
    for layer in range(1, 5):
        for blk in range(2):
            p = f"layer{layer}.{blk}"
            keys += [f"{p}.conv1.weight"] + [f"{p}.bn1.{s}" for s in _BN]
            keys += [f"{p}.conv2.weight"] + [f"{p}.bn2.{s}" for s in _BN]
            if layer > 1 and blk == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{s}" for s in _BN]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_state_dict_keys_are_torchvisions():
    sd = resnet18(num_classes=1000, width=8).state_dict()
    keys = list(sd)
    expected = _torchvision_resnet18_keys()
    assert keys == expected  # same names, same order
    assert len(keys) == 122
    srt = sorted(keys)
    assert srt[0] == "bn1.bias" and srt[-1] == "layer4.1.conv2.weight"
    assert sum(k.endswith("num_batches_tracked") for k in keys) == 20
    assert [k for k in keys if "downsample" in k][:2] == ["layer2.0.downsample.0.weight",
                                                          "layer2.0.downsample.1.weight"]
    # torchvision shapes at full width
    with torch.device("meta"):
        full = resnet18(num_classes=1000).state_dict()
    assert full["conv1.weight"].shape == (64, 3, 7, 7)
    assert full["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert full["fc.weight"].shape == (1000, 512)


def test_resnet50_state_dict_keys_are_torchvisions():
    with torch.device("meta"):
        sd = resnet50(num_classes=1000).state_dict()
    keys = list(sd)
    assert len(keys) == 320
    assert keys[:2] == ["conv1.weight", "bn1.weight"] and keys[-2:] == ["fc.weight", "fc.bias"]
    srt = sorted(keys)
    assert srt[0] == "bn1.bias" and srt[-1] == "layer4.2.conv3.weight"
    ds = sorted({k.rsplit(".", 2)[0] for k in keys if "downsample" in k})
    assert ds == [f"layer{i}.0.downsample" for i in range(1, 5)]  # layer1 too: 64 -> 256 channels
    assert sd["layer1.0.conv2.weight"].shape == (64, 64, 3, 3)  # v1.5: stride on the 3x3
    assert sd["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert sd["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)


def test_cifar_stem_and_feature_extractor_keep_key_names():
    tv = resnet18(num_classes=1000, width=8).state_dict()
    cifar = resnet18(cifar_stem=True, width=8)
    assert cifar.conv1.weight.shape == (8, 3, 3, 3) and isinstance(cifar.maxpool, nn.Identity)
    assert set(cifar.state_dict()) == set(tv) - {"fc.weight", "fc.bias"}
    # a torchvision-style checkpoint moves into a feature extractor once fc.* is dropped
    feat = resnet18(width=8)
    feat.load_state_dict({k: v for k, v in tv.items() if not k.startswith("fc.")})
    assert torch.equal(feat.layer3[1].bn2.weight, tv["layer3.1.bn2.weight"])
    assert torch.equal(feat.layer4[0].downsample[1].running_var, tv["layer4.0.downsample.1.running_var"])


def test_vit_state_dict_keys_are_timms():
    with torch.device("meta"):
        keys = list(vit_tiny(num_classes=1000).state_dict())
    assert keys[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]
    assert keys[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    blk = [k[len("blocks.0."):] for k in keys if k.startswith("blocks.0.")]
    assert blk == ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                   "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                   "mlp.fc2.weight", "mlp.fc2.bias"]
    assert len(keys) == 4 + 12 * 12 + 4


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 3, 5])
def test_resnet18_cifar_stem_32px_shapes(batch):
    model = resnet18(cifar_stem=True, width=8)
    assert model.feature_dim == 64
    x = torch.randn(batch, 3, 32, 32)
    assert model.forward_features(x).shape == (batch, 64, 4, 4)  # /8 with the CIFAR stem
    assert model(x).shape == (batch, 64)


@pytest.mark.parametrize("batch", [1, 3])
def test_resnet50_64px_shapes(batch):
    model = resnet50(width=8).eval()
    assert model.feature_dim == 256  # 8 * 8 * expansion 4
    x = torch.randn(batch, 3, 64, 64)
    assert model.forward_features(x).shape == (batch, 256, 2, 2)  # /32 with the ImageNet stem
    assert model(x).shape == (batch, 256)
    logits = resnet50(width=8, num_classes=10).eval()(x)
    assert logits.shape == (batch, 10)


def test_resnet_fc_identity_and_num_classes():
    x = torch.randn(3, 3, 32, 32)
    m = resnet18(width=8, cifar_stem=True, fc=nn.Identity())
    assert isinstance(m.fc, nn.Identity) and m(x).shape == (3, m.feature_dim)
    m = resnet18(width=8, cifar_stem=True, num_classes=7)
    assert m.fc.in_features == m.feature_dim and m(x).shape == (3, 7)


def test_resnet_width_option():
    with torch.device("meta"):
        half = resnet18(width=32)
        full = resnet18()
        r50 = resnet50(width=32)
    assert half.feature_dim == 256 and full.feature_dim == 512 and r50.feature_dim == 1024
    assert [half.get_submodule(f"layer{i}")[0].conv1.out_channels for i in range(1, 5)] == [32, 64, 128, 256]
    assert half.conv1.out_channels == 32
    # every conv halves in and out channels -> ~1/4 of the conv parameters (BN ~1/2)
    assert 0.24 < n_params(half) / n_params(full) < 0.26
    # full (no fc) 11,176,512 = conv1 9,408 + other convs 11,157,504 + BN 9,600; at width 32: conv1 only
    # halves its out channels (3 -> 32), other convs /4, BN /2
    assert n_params(half) == 9_408 // 2 + 11_157_504 // 4 + 9_600 // 2 == 2_798_880


def test_zero_init_residual():
    m = resnet18(width=8, zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for layer in (m.layer1, m.layer4) for b in layer)
    assert torch.count_nonzero(m.layer1[0].bn1.weight) == 8
    m = resnet50(width=8, zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in m.layer2)
    assert torch.count_nonzero(resnet18(width=8).layer1[0].bn2.weight) == 8


@pytest.mark.parametrize("batch", [1, 3])
def test_vit_patch4_on_32px(batch):
    model = vit_tiny(img_size=32, patch_size=4)
    assert model.feature_dim == 192
    x = torch.randn(batch, 3, 32, 32)
    tokens = model.forward_features(x)
    assert tokens.shape == (batch, 1 + 64, 192)
    out = model(x)
    assert out.shape == (batch, 192)
    assert torch.allclose(out, tokens[:, 0])


def test_vit_options_mean_pool_sincos_and_patch8():
    x = torch.randn(3, 3, 64, 64)
    m = vit_small(img_size=64, patch_size=8, depth=2, pool="mean", pos_embed="sincos").eval()
    assert "pos_embed" in m.state_dict() and "pos_embed" not in dict(m.named_parameters())
    assert m.pos_embed.shape == (1, 65, 384)
    assert torch.equal(m.pos_embed[0, 0], torch.zeros(384))  # cls position
    tokens = m.forward_features(x)
    assert tokens.shape == (3, 65, 384)
    assert torch.allclose(m(x), tokens[:, 1:].mean(1), atol=1e-6)
    assert vit_base(img_size=64, patch_size=8, depth=1, num_classes=5)(x).shape == (3, 5)


def test_vit_other_input_size_interpolates_position_embedding():
    m = vit_tiny(img_size=32, patch_size=4, depth=1).eval()
    assert m(torch.randn(2, 3, 48, 48)).shape == (2, 192)
    assert m.forward_features(torch.randn(2, 3, 48, 32)).shape == (2, 1 + 12 * 8, 192)
    s = vit_tiny(img_size=32, patch_size=4, depth=1, pos_embed="sincos")
    assert s(torch.randn(2, 3, 16, 16)).shape == (2, 192)


def test_patch_embed_module():
    pe = PatchEmbed(img_size=32, patch_size=4, embed_dim=16)
    assert isinstance(pe.proj, nn.Conv2d) and pe.grid_size == (8, 8) and pe.num_patches == 64
    assert pe(torch.randn(2, 3, 32, 32)).shape == (2, 64, 16)
    with pytest.raises(ValueError, match="not divisible"):
        pe(torch.randn(2, 3, 30, 32))
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbed(img_size=30, patch_size=4)


@pytest.mark.parametrize("arch", ARCHS)
def test_build_backbone_every_arch_returns_features(arch):
    kw = dict(cifar_stem=True, width=8) if arch.startswith("resnet") else dict(img_size=32, patch_size=8,
                                                                                 depth=1)
    model = build_backbone(arch, **kw)
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, model.feature_dim)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_build_backbone_unknown_arch():
    assert ARCHS == ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")
    with pytest.raises(ValueError, match="unknown arch 'resnet101'.*resnet18, resnet50, vit_tiny"):
        build_backbone("resnet101")


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="pool"):
        vit_tiny(img_size=32, patch_size=4, depth=1, pool="max")
    with pytest.raises(ValueError, match="pos_embed"):
        vit_tiny(img_size=32, patch_size=4, depth=1, pos_embed="rope")
    with pytest.raises(ValueError, match="num_heads"):
        vit_tiny(img_size=32, patch_size=4, depth=1, num_heads=5)
    with pytest.raises(TypeError):
        build_backbone("resnet18", not_an_option=1)


# --------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,kw", [
    ("resnet18", dict(cifar_stem=True, width=8)),
    ("resnet50", dict(width=8)),
    ("vit_tiny", dict(img_size=32, patch_size=4, depth=2)),
    ("vit_tiny", dict(img_size=32, patch_size=8, depth=2, pool="mean")),
])
def test_gradients_reach_every_parameter(arch, kw):
    model = build_backbone(arch, **kw)
    head = MLPHead(model.feature_dim, hidden_dim=32, out_dim=16)
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    head(model(x)).square().mean().backward()
    for name, p in list(model.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# heads, channels_last
# --------------------------------------------------------------------------------------------------

def test_mlp_head_layouts():
    h = MLPHead(64)  # SimCLR: Linear-BN-ReLU-Linear, 2048 hidden, 128 out
    assert [type(m).__name__ for m in h.mlp] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert h.mlp[0].bias is None and h.mlp[3].bias is not None
    assert h(torch.randn(3, 64)).shape == (3, 128)
    h3 = MLPHead(64, hidden_dim=32, out_dim=8, num_layers=3, last_bn=True)
    assert [type(m).__name__ for m in h3.mlp] == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear",
                                                                                        "BatchNorm1d"]
    assert h3.mlp[-1].affine is False and h3.mlp[-2].bias is None
    assert h3(torch.randn(5, 64)).shape == (5, 8)
    assert [type(m).__name__ for m in MLPHead(64, out_dim=8, num_layers=1).mlp] == ["Linear"]
    with pytest.raises(ValueError, match="num_layers"):
        MLPHead(64, num_layers=0)


def test_linear_head():
    h = LinearHead(64, 10)
    assert h(torch.randn(3, 64)).shape == (3, 10) and torch.equal(h.linear.bias, torch.zeros(10))
    hb = LinearHead(64, 10, bn=True)
    assert isinstance(hb.bn, nn.BatchNorm1d) and hb(torch.randn(3, 64)).shape == (3, 10)


def test_channels_last_same_result(device, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare layouts, not TF32
    model = resnet18(width=8, cifar_stem=True).to(device).eval()
    x = torch.randn(3, 3, 32, 32, device=device)
    ref = model(x)
    cl = to_channels_last(model)
    assert cl is model
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    vit = vit_tiny(img_size=32, patch_size=4, depth=1).to(device).eval()
    ref = vit(x)
    to_channels_last(vit)
    out = vit(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
