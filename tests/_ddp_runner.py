"""``distill`` with two BatchNorm-free zoo additions, for the multi-process tests.

BatchNorm statistics depend on the per-process batch, so exact single- vs multi-process
equivalence is checked on models without it: ``mlp-a`` (teacher) and ``mlp-b`` (student).
Run as ``python _ddp_runner.py run ...`` or ``torchrun --nproc_per_node 2 _ddp_runner.py run ...``.
"""

from __future__ import annotations

import sys

from torch import nn

from distill.cli import main
from distill.models import register


def mlp(hidden: int, num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


@register("mlp-a")
def mlp_a(num_classes: int, in_channels: int) -> nn.Module:
    return mlp(64, num_classes, in_channels)


@register("mlp-b")
def mlp_b(num_classes: int, in_channels: int) -> nn.Module:
    return mlp(16, num_classes, in_channels)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
