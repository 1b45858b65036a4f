"""Argument checks shared by the losses."""

from __future__ import annotations

import math

import torch


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, or a ValueError unless it is finite and > 0."""
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def check_fraction(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it lies in [0, 1]."""
    number = float(value)
    if not 0.0 <= number <= 1.0:  # also false for NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


def shape_without(shape: torch.Size, dim: int) -> torch.Size:
    """``shape`` without dimension ``dim`` (the positions of logits with classes along ``dim``)."""
    axis = dim % len(shape)
    return shape[:axis] + shape[axis + 1 :]
