"""fastssl.models.decoder: ConvDecoder shapes, ChannelwiseFC against a per-channel Linear reference."""

import pytest
import torch

from fastssl.models import resnet18
from fastssl.models.decoder import ChannelwiseFC, ConvDecoder, feature_stride


@pytest.mark.parametrize("size,cifar", [(64, False), (32, True), (96, False), (50, False)])
def test_decoder_restores_the_image_size_from_the_feature_map(size, cifar):
    net = resnet18(width=8, cifar_stem=cifar)
    stride = feature_stride(net)
    f = net.forward_features(torch.randn(2, 3, size, size))
    dec = ConvDecoder(net.feature_dim, 3, ConvDecoder.stages_for(size, stride), out_size=size)
    assert dec(f).shape == (2, 3, size, size)


def test_feature_stride_needs_a_resnet():
    assert feature_stride(resnet18(width=8)) == 32 and feature_stride(resnet18(width=8, cifar_stem=True)) == 8
    with pytest.raises(ValueError, match="ResNet"):
        feature_stride(torch.nn.Linear(2, 2))


def test_channelwise_fc_matches_per_channel_linear_reference():
    layer = ChannelwiseFC(5, 3, 2).double()
    x = torch.randn(4, 5, 3, 2, dtype=torch.float64)
    ref = torch.stack([x[:, c].reshape(4, 6) @ layer.weight[c].T + layer.bias[c] for c in range(5)], 1)
    layer.eval()
    want = layer.mix(torch.relu(ref).reshape(4, 5, 3, 2))
    assert torch.allclose(layer(x), want, rtol=1e-12, atol=1e-12)
    # No cross-channel weights before the 1x1 conv: channel c's pre-mix output depends on channel c only.
    y = torch.einsum("bcn,cmn->bcm", x.reshape(4, 5, 6), layer.weight)
    x2 = x.clone()
    x2[:, 1] += 1
    y2 = torch.einsum("bcn,cmn->bcm", x2.reshape(4, 5, 6), layer.weight)
    changed = (y2 - y).abs().amax((0, 2)) > 0
    assert changed.tolist() == [False, True, False, False, False]
    with pytest.raises(ValueError, match="expects"):
        layer(torch.randn(1, 5, 2, 2, dtype=torch.float64))
