"""Wide ResNets ``wrn-D-K`` (Zagoruyko & Komodakis 2016), without dropout.

Pre-activation basic blocks, n = (D-4)/6 per stage, stage widths 16K, 32K, 64K.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from distill.errors import ConfigError
from distill.models.cnn import ZooModel, classifier_head, conv3x3

WRN_PATTERN = re.compile(r"wrn-(\d+)-(\d+)")
WRN_HELP = "wrn-D-K (e.g. wrn-16-2, wrn-40-2)"


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3, plus shortcut (no ReLU after the sum).

    ``[N, C_in, H, W]`` -> ``[N, C_out, H/stride, W/stride]`` (rounded up).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.shortcut: nn.Module
        self.projects = stride != 1 or in_channels != out_channels
        if self.projects:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        # As in the reference WRN code: a projection sees the pre-activated input, while an
        # identity shortcut carries the raw input so the residual path stays unnormalised.
        return out + self.shortcut(activated if self.projects else x)


def check_wrn(depth: int, widen_factor: int) -> None:
    """Raise :class:`ConfigError` unless depth is 6n+4 (n >= 1) and the widen factor >= 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(f"wrn depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
    if widen_factor < 1:
        raise ConfigError(f"wrn widen factor must be an integer >= 1, got {widen_factor}")


class WideResNet(ZooModel):
    """WRN-D-K: stem conv3×3 to 16 channels (no BN/ReLU), three pre-activation stages.

    Stage widths 16K, 32K, 64K with strides 1, 2, 2 (32×32 input -> 32, 16, 8);
    head = bn, relu, pool, flatten, fc.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        depth: int = 16,
        widen_factor: int = 2,
    ) -> None:
        check_wrn(depth, widen_factor)
        blocks_per_stage = (depth - 4) // 6
        stem = conv3x3(in_channels, 16)
        stages: list[nn.Module] = []
        channels = 16
        for index, base in enumerate((16, 32, 64)):
            width = base * widen_factor
            stride = 1 if index == 0 else 2
            blocks: list[nn.Module] = []
            for block_index in range(blocks_per_stage):
                blocks.append(PreActBlock(channels, width, stride if block_index == 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        super().__init__(stem, stages, classifier_head(channels, num_classes, preact_bn=True))


def parse_wrn(name: str) -> tuple[int, int] | None:
    """``"wrn-16-2"`` -> ``(16, 2)``; None when the name is not of the form ``wrn-D-K``."""
    match = WRN_PATTERN.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))
