"""Where tensors go: a model's device, and a dict batch moved to one."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def model_device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device of ``model``'s first parameter or buffer (``default``, else the CPU, for a
    model with neither): where its inputs must go."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return default if default is not None else torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (other values kept)."""
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in batch.items()
    }
