"""A truncated GhostNet (stem + first nine Ghost bottlenecks), the paper's CIFAR backbone (its Table 4).

Ghost modules = a pointwise convolution plus a cheap depthwise one, so the prunable scope holds
depthwise (grouped) convolutions. Every convolution is followed by BatchNorm. The paper keeps
BatchNorm, the squeeze-and-excitation modules (named ``se``) and the classifier dense: exclude
them at conversion with ``ignore=["re:.*\\.se\\..*", "classifier"]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# (depthwise kernel, expansion channels, output channels, squeeze-excite ratio, stride) of GhostNet's first nine blocks
BLOCKS = (
    (3, 16, 16, 0.0, 1),
    (3, 48, 24, 0.0, 2),
    (3, 72, 24, 0.0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0.0, 2),
    (3, 200, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class GhostModule(nn.Module):
    """Half the output channels from a 1×1 conv, the other half from a cheap 3×3 depthwise conv of those."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.cout = cout
        init = math.ceil(cout / 2)
        self.primary = _conv_bn(cin, init, 1, relu=relu)
        self.cheap = _conv_bn(init, init, 3, groups=init, relu=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, : self.cout]


class SqueezeExcite(nn.Module):
    """Channel attention with a hard sigmoid gate (kept dense in the paper)."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        reduced = max(4, int(channels * ratio) // 4 * 4)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class GhostBottleneck(nn.Module):
    """Ghost module -> (strided depthwise conv) -> (SE) -> Ghost module, plus a shortcut."""

    def __init__(self, cin: int, mid: int, cout: int, kernel: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid, relu=True)
        self.dw = _conv_bn(mid, mid, kernel, stride, groups=mid, relu=False) if stride > 1 else nn.Identity()
        self.se = SqueezeExcite(mid, se_ratio) if se_ratio > 0 else nn.Identity()
        self.ghost2 = GhostModule(mid, cout, relu=False)
        if cin == cout and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(_conv_bn(cin, cin, kernel, stride, groups=cin, relu=False), _conv_bn(cin, cout, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ghost2(self.se(self.dw(self.ghost1(x)))) + self.shortcut(x)


class MiniGhostNet(nn.Module):
    """Stem 3→16 (stride 2), nine Ghost bottlenecks, 1×1 conv 80→184, pooled 1×1 head 184→128, Linear 128→C."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, 16, 3, 2)
        blocks, cin = [], 16
        for kernel, mid, cout, se, stride in BLOCKS:
            blocks.append(GhostBottleneck(cin, mid, cout, kernel, stride, se))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.expand = _conv_bn(cin, 184, 1)
        self.head = nn.Conv2d(184, 128, 1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.expand(self.blocks(self.stem(x)))
        x = F.relu(self.head(F.adaptive_avg_pool2d(x, 1)))
        return self.classifier(x.flatten(1))
