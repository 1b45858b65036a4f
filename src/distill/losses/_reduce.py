"""Shared reductions for the losses."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over all positions, or over those where ``mask`` is true.

    ``mask`` must have the shape of ``values``. An all-false mask gives 0 (not NaN), so a
    batch with no valid position contributes nothing.
    """
    if mask is None:
        return values.mean()
    if mask.shape != values.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' shape without the class "
            f"dimension, {tuple(values.shape)}"
        )
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def shape_without(shape: torch.Size, dim: int) -> torch.Size:
    """``shape`` without dimension ``dim`` (the positions of logits with classes along ``dim``)."""
    axis = dim % len(shape)
    return shape[:axis] + shape[axis + 1 :]


def check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str = "logits") -> None:
    """ValueError unless the student's and teacher's tensors have one shape."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher {what} must have the same shape, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
