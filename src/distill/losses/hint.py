"""FitNets hint loss (Romero et al. 2014)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._reduce import check_not_empty


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error between a (regressed) student feature and a teacher feature.

    .. math::
        \mathcal{L} = \frac{1}{|u|} \sum_j \big(r(v)_j - u_j\big)^2

    the element mean over every position of the two tensors. The paper writes
    :math:`\tfrac12 \|u_h - r(v_g)\|^2`; the mean differs from it by a constant factor only,
    and keeps the loss's scale independent of the feature's size.

    Args:
        student_feature: any shape, e.g. ``[N, C, H, W]`` or ``[N, L, D]``: the student's
            guided-layer output after the regressor.
        teacher_feature: the same shape; treated as a constant (no gradient flows into it).

    Returns:
        A float32 scalar, computed in float32 even under autocast.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            "student and teacher features must have the same shape, got "
            f"{tuple(student_feature.shape)} and {tuple(teacher_feature.shape)}; map the "
            "student's to the teacher's with distill.adapters.build_adapter"
        )
    check_not_empty(student_feature, "student_feature")
    with torch.autocast(device_type=student_feature.device.type, enabled=False):
        return F.mse_loss(student_feature.float(), teacher_feature.detach().float())
