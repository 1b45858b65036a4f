"""Shared reductions for the losses."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` over all positions, or over those where ``mask`` is true.

    ``mask`` must have the shape of ``values`` (:func:`check_mask`). An all-false mask gives 0
    (not NaN), so a batch with no valid position contributes nothing; an empty ``values`` (a
    batch of no sample) is a ``ValueError``.
    """
    check_not_empty(values, "the batch")
    if mask is None:
        return values.mean()
    weights = check_mask(mask, values.shape).to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def check_not_empty(tensor: torch.Tensor, name: str) -> None:
    """ValueError for a tensor of no element: a mean over an empty batch would be NaN."""
    if tensor.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(tensor.shape)}): a loss needs at least one sample"
        )


def check_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``mask`` as a boolean tensor; ValueError unless it has ``shape`` (the logits' without
    the class dimension) and holds only booleans or 0/1."""
    if mask.shape != shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits' shape without the class "
            f"dimension, {tuple(shape)}"
        )
    if mask.dtype == torch.bool:
        return mask
    bad = mask[(mask != 0) & (mask != 1)]
    if bad.numel():
        raise ValueError(
            f"mask must be boolean or hold only 0 and 1, got {mask.dtype} values such as "
            f"{bad.flatten()[0].item()}"
        )
    return mask.bool()


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
