"""Numeric precision by name: the one map from ``fp32``/``bf16``/``fp16`` to autocast dtypes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch

T = TypeVar("T")

#: Precision name -> autocast dtype (``None``: no autocast, float32).
DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (``fp32`` gives a no-op)."""
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}; got {precision!r}")
    dtype = DTYPES[precision]
    if dtype is None:
        return nullcontext()
    device_type = device.type if isinstance(device, torch.device) else str(device)
    return torch.autocast(device_type=device_type, dtype=dtype)


def autocast_each(items: Iterator[T], device: torch.device | str, precision: str) -> Iterator[T]:
    """The items of a generator, each computed (its ``next()``) under ``autocast``."""
    while True:
        with autocast(device, precision):
            item = next(items, None)
        if item is None:
            return
        yield item


def check_device(precision: str, device: torch.device) -> None:
    """Refuse ``fp16`` on the CPU: autocast to float16 works there but is slow and gains
    nothing (``bf16`` is the CPU's half precision)."""
    if precision == "fp16" and device.type == "cpu":
        from .errors import ConfigError

        raise ConfigError(
            "precision 'fp16' needs a GPU; on CPU use 'bf16' or 'fp32' (train.precision)"
        )
