"""Pre-activation residual networks for 28x28 one-channel digits: wide ResNets (Zagoruyko &
Komodakis 2016) and the bottleneck ResNet-164 (He et al. 2016, "Identity mappings").

CIFAR's three stages at 32x32, 16x16 and 8x8 become 28x28, 14x14 and 7x7 here; the stem takes
one channel. Registered by name in :mod:`models`.
"""

from __future__ import annotations

import torch
from torch import nn

from digit_utils.errors import ConfigError


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the input (projected when it must be)."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.pre = _bn_relu(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.body = nn.Sequential(
            _bn_relu(planes), nn.Dropout(dropout), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        )
        # the projection sees the pre-activated input, as in the wide ResNet paper's code
        self.project = (
            nn.Conv2d(c_in, planes, 1, stride, bias=False)
            if stride != 1 or c_in != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        shortcut = x if self.project is None else self.project(a)
        return shortcut + self.body(self.conv1(a))


class Bottleneck(nn.Module):
    """BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 to 4x the planes, plus input."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        out = planes * self.expansion
        self.pre = _bn_relu(c_in)
        self.body = nn.Sequential(
            nn.Conv2d(c_in, planes, 1, bias=False),
            _bn_relu(planes),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            _bn_relu(planes),
            nn.Dropout(dropout),
            nn.Conv2d(planes, out, 1, bias=False),
        )
        self.project = (
            nn.Conv2d(c_in, out, 1, stride, bias=False) if stride != 1 or c_in != out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        shortcut = x if self.project is None else self.project(a)
        return shortcut + self.body(a)


class PreActResNet(nn.Module):
    """Stem conv, three stages of ``blocks`` residual blocks (28 -> 14 -> 7), BN-ReLU, pool, FC."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: int,
        planes: tuple[int, int, int],
        dropout: float = 0.0,
        num_classes: int = 10,
    ):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)  # (B,16,28,28)
        layers, c_in = [], 16
        for stage, p in enumerate(planes):
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(c_in, p, stride, dropout))
                c_in = p * block.expansion
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            _bn_relu(c_in), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def wide_resnet(depth: int, widen: int, dropout: float = 0.0) -> PreActResNet:
    """WRN-depth-widen: (depth - 4) / 6 basic blocks per stage, 16k, 32k and 64k channels."""
    if (depth - 4) % 6:
        raise ConfigError(f"wide ResNet depth must be 6n + 4, got {depth}")
    return PreActResNet(
        BasicBlock, (depth - 4) // 6, (16 * widen, 32 * widen, 64 * widen), dropout
    )


def preact_resnet(depth: int = 164) -> PreActResNet:
    """Bottleneck pre-activation ResNet: (depth - 2) / 9 blocks per stage, 64/128/256 out."""
    if (depth - 2) % 9:
        raise ConfigError(f"bottleneck ResNet depth must be 9n + 2, got {depth}")
    return PreActResNet(Bottleneck, (depth - 2) // 9, (16, 32, 64))
