"""Plain CNNs of the TAKD paper, plus the skeleton every zoo model shares.

Every zoo model is a :class:`ZooModel`: ``stem`` -> ``stages`` -> ``head``, so features can be
tapped by the same dotted names in every family (``stem``, ``stages.0``, ``stages.1.0``,
``head.fc``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import ConfigError

# Conv widths per section for the TAKD ladder (Mirzadeh et al. 2020); N = number of conv layers.
CNN_SECTIONS: dict[int, tuple[tuple[int, ...], ...]] = {
    2: ((16,), (32,)),
    4: ((32, 32), (64, 64)),
    6: ((32, 32), (64, 64), (128, 128)),
    8: ((32, 32), (64, 64, 64), (128, 128, 128)),
    10: ((32, 32, 32), (64, 64, 64), (128, 128, 128, 128)),
}


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0; Linear keeps torch's default.

    Only torch's RNG is used, so ``torch.manual_seed`` before construction fixes the weights.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1 (keeps the size at stride 1), no bias (a BN follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def classifier_head(
    in_features: int, num_classes: int, *, preact_bn: bool = False
) -> nn.Sequential:
    """``[N, C, H, W]`` -> ``[N, num_classes]``: (bn, relu,) pool, flatten, fc.

    Global average pooling makes the head independent of the input size.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if preact_bn:
        # Pre-activation nets end on a bare conv, so the last BN-ReLU lives in the head.
        layers["bn"] = nn.BatchNorm2d(in_features)
        layers["relu"] = nn.ReLU()
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


class ZooModel(nn.Module):
    """``logits = head(stages(stem(x)))``; ``stages.i`` outputs section i at its resolution."""

    def __init__(self, stem: nn.Module, stages: Sequence[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.head = head
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class ConvBlock(nn.Sequential):
    """conv3×3 (padding 1) -> BN -> ReLU; ``[N, C_in, H, W]`` -> ``[N, C_out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            OrderedDict(
                conv=conv3x3(in_channels, out_channels),
                bn=nn.BatchNorm2d(out_channels),
                relu=nn.ReLU(),
            )
        )


class PlainCNN(ZooModel):
    """Plain CNN: sections of conv blocks, 2×2 max pooling between sections, FC head.

    ``stem`` is the first conv block; ``stages.0`` the rest of section 0 (empty for a
    one-conv section); ``stages.i`` (i >= 1) is ``MaxPool2d(2, ceil_mode=True)`` then section
    i's conv blocks, so it halves the resolution: 32×32 input -> 32, 16, 8.
    ``ceil_mode`` keeps odd sizes from losing a row and tiny maps from reaching 0.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        sections: Sequence[Sequence[int]] = CNN_SECTIONS[2],
    ) -> None:
        if not sections or any(not section for section in sections):
            raise ConfigError(f"cnn sections must be non-empty lists of widths, got {sections!r}")
        first = sections[0][0]
        stem = ConvBlock(in_channels, first)
        stages: list[nn.Module] = []
        channels = first
        for index, widths in enumerate(sections):
            layers: list[nn.Module] = [] if index == 0 else [nn.MaxPool2d(2, ceil_mode=True)]
            # Section 0's first conv is the stem.
            for width in widths[1:] if index == 0 else widths:
                layers.append(ConvBlock(channels, width))
                channels = width
            stages.append(nn.Sequential(*layers))
        super().__init__(stem, stages, classifier_head(channels, num_classes))
