"""Argument checks shared by the vision losses (AT, DKD, DIST, RKD, PKT, CRD).

Each returns the value as a float, or raises a ValueError that names the argument, the value
given and what would be right.
"""

from __future__ import annotations

import math


def check_temperature(temperature: float) -> float:
    """``temperature`` as a float, or a ValueError unless it is finite and > 0."""
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and > 0."""
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_weight(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and >= 0."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number
