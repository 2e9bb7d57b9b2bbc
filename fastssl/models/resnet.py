"""ResNet-18 / ResNet-50 backbones with torchvision-compatible state-dict keys.

The module tree mirrors ``torchvision.models.resnet`` exactly (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer4.*.downsample.0/1``, ``fc``) so that a torchvision state dict loads with
``model.load_state_dict(sd)`` (drop ``fc.*`` first, or pass ``strict=False``, when the model is a
feature extractor with ``num_classes=0``). Bottleneck is the "v1.5" variant (stride on the 3x3
conv), as in torchvision.

Options beyond torchvision (none of them changes a key name):
- ``cifar_stem=True``: conv1 is 3x3 stride 1 and the max-pool is removed, for 32-64 px images.
- ``width``: base width of the first stage (64 = torchvision); every stage scales with it,
  e.g. ``width=32`` halves all channel counts (about 1/4 of the FLOPs and parameters).
- ``num_classes=0`` (the default here, unlike torchvision's 1000): ``fc`` is ``nn.Identity`` and
  ``forward`` returns the pooled features ``[B, feature_dim]``.

``model.config()`` gives the keyword arguments the network was built with and ``model.arch`` its builder's
name (``resnet18`` / ``resnet50``), so ``build_backbone(model.arch, **model.config())`` rebuilds it (what an
exported backbone records).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). Keys: conv1, bn1, conv2, bn2, downsample.{0,1}."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last_bn(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, v1.5) -> 1x1 x4 (ResNet-50). Keys: conv1..3, bn1..3, downsample.{0,1}."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last_bn(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet backbone. ``forward(x: float [B, C, H, W]) -> [B, feature_dim]`` (or logits when
    ``num_classes > 0``).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        num_classes: 0 (default) -> ``fc = nn.Identity()`` and forward returns pooled features;
            > 0 -> ``fc = nn.Linear(feature_dim, num_classes)``.
        width: channels of the stem and of the first stage (64 = torchvision). Stage ``i`` has
            ``width * 2**i`` channels (times ``block.expansion`` at its output).
        cifar_stem: 3x3 stride-1 ``conv1`` and no max-pool (small images). Same key names.
        zero_init_residual: zero the last BN's gamma in each block, so each block starts as identity
            (Goyal et al. 2017; torchvision's option of the same name).
        in_chans: input channels (3).
        fc: an explicit module to use as ``fc`` (e.g. ``nn.Identity()``); overrides ``num_classes``.

    Attributes:
        feature_dim: size of the pooled features (the input of ``fc``): ``8 * width * expansion``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...] | list[int],
                 num_classes: int = 0, width: int = 64, cifar_stem: bool = False,
                 zero_init_residual: bool = False, in_chans: int = 3, fc: nn.Module | None = None,
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet expects 4 stages, got layers={list(layers)}")
        if width < 1 or num_classes < 0:
            raise ValueError(f"width must be >= 1 and num_classes >= 0, got width={width}, "
                             f"num_classes={num_classes}")
        self._norm_layer = norm_layer
        # What rebuilds this network (``config()``); an ``fc`` module or another norm_layer is not data.
        self.init_kwargs = {"num_classes": num_classes, "width": width, "cifar_stem": cifar_stem,
                            "zero_init_residual": zero_init_residual, "in_chans": in_chans}
        self._not_data = [n for n, custom in (("fc", fc is not None), ("norm_layer", norm_layer is not nn.BatchNorm2d))
                          if custom]
        self.arch: str | None = None  # the builder's name (resnet18, resnet50), set by it
        self.inplanes = width
        self.width = width
        self.cifar_stem = cifar_stem
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = width * 8 * block.expansion
        if fc is not None:
            self.fc = fc
        elif num_classes > 0:
            self.fc = nn.Linear(self.feature_dim, num_classes)
        else:
            self.fc = nn.Identity()
        self.num_classes = num_classes if fc is None else getattr(fc, "out_features", 0)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last_bn()

    def config(self) -> dict:
        """The keyword arguments this network was built with (JSON-able): ``build_backbone(self.arch,
        **self.config())`` builds the same network (modules, shapes and forward; the weights aside). Raises
        ValueError for a network built with an ``fc`` module or a ``norm_layer`` other than BatchNorm2d
        (not describable as data)."""
        if self._not_data:
            raise ValueError(f"this ResNet was built with a custom {' and '.join(self._not_data)}, which cannot be "
                             "written down as constructor keywords")
        return dict(self.init_kwargs)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                self._norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map ``[B, feature_dim, H/32, W/32]`` (``H/8`` with the CIFAR stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return self.fc(x)


def resnet18(**kw) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11,689,512 parameters with ``num_classes=1000``."""
    model = ResNet(BasicBlock, [2, 2, 2, 2], **kw)
    model.arch = "resnet18"
    return model


def resnet50(**kw) -> ResNet:
    """ResNet-50 (Bottleneck v1.5, [3, 4, 6, 3]); 25,557,032 parameters with ``num_classes=1000``."""
    model = ResNet(Bottleneck, [3, 4, 6, 3], **kw)
    model.arch = "resnet50"
    return model
