"""CIFAR-style ResNets (He et al. 2016): basic blocks, three stages, depth 6n+2.

``resnet20`` etc. use a 16-channel stem and stage widths 16, 32, 64; the ``x4`` variants of
the CRD/RepDistiller benchmarks use a 32-channel stem and widths 64, 128, 256. Shortcuts are
1×1 conv + BN where the shape changes (option B), identity elsewhere.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import ConfigError
from distill.models.cnn import ZooModel, classifier_head, conv3x3

# name -> (depth, stem width, stage widths)
RESNETS: dict[str, tuple[int, int, tuple[int, int, int]]] = {
    **{f"resnet{d}": (d, 16, (16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (8, 32, (64, 128, 256)),
    "resnet32x4": (32, 32, (64, 128, 256)),
}


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus shortcut, then ReLU.

    ``[N, C_in, H, W]`` -> ``[N, C_out, H/stride, W/stride]`` (rounded up).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        else:
            # Kept as a module so every block has a `shortcut` to tap.
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """CIFAR ResNet: stem conv3×3-BN-ReLU, three stages of n = (depth-2)/6 basic blocks.

    Stage strides are 1, 2, 2 (the first block of a stage downsamples), so a 32×32 input gives
    maps of 32, 16, 8 at ``stages.0``, ``stages.1``, ``stages.2``; head = pool, flatten, fc.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        depth: int = 20,
        stem_width: int = 16,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"resnet depth must be 6n+2 (8, 14, 20, 32, 44, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stem = nn.Sequential(
            OrderedDict(
                conv=conv3x3(in_channels, stem_width),
                bn=nn.BatchNorm2d(stem_width),
                relu=nn.ReLU(),
            )
        )
        stages: list[nn.Module] = []
        channels = stem_width
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        super().__init__(stem, stages, classifier_head(channels, num_classes))
