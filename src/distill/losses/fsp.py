"""FSP matrices and their loss (Yim, Joo, Bae and Kim, CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._reduce import check_not_empty


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    r"""The FSP ("flow of solution procedure") matrix between two feature maps.

    .. math::
        G_{ab} = \frac{1}{h w} \sum_{s=1}^{h} \sum_{t=1}^{w} F^1_{a,s,t}\, F^2_{b,s,t}

    for every item of the batch: ``G = F1 · F2ᵀ / (h·w)`` with ``F1`` as ``[C1, h·w]`` and
    ``F2`` as ``[C2, h·w]``. When the two maps differ in size, the larger is max-pooled
    (adaptive max pooling) to ``h = min(H, H')``, ``w = min(W, W')`` first.

    One batched matrix product: memory ``O(N·C·h·w + N·C1·C2)``, never a
    ``[N, C1, C2, h·w]`` intermediate.

    Args:
        first: ``[N, C1, H, W]``.
        second: ``[N, C2, H', W']``.

    Returns:
        ``[N, C1, C2]`` in float32 (computed in float32 even under autocast: the sum over
        ``h·w`` positions loses precision in half types).
    """
    if first.dim() != 4 or second.dim() != 4:
        raise ValueError(
            "fsp_matrix needs two [N, C, H, W] feature maps, got shapes "
            f"{tuple(first.shape)} and {tuple(second.shape)}"
        )
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"the two maps must come from the same batch, got batch sizes {first.shape[0]} "
            f"and {second.shape[0]}"
        )
    h = min(first.shape[2], second.shape[2])
    w = min(first.shape[3], second.shape[3])
    with torch.autocast(device_type=first.device.type, enabled=False):
        a, b = first.float(), second.float()
        if a.shape[2:] != (h, w):
            a = F.adaptive_max_pool2d(a, (h, w))
        if b.shape[2:] != (h, w):
            b = F.adaptive_max_pool2d(b, (h, w))
        return torch.bmm(a.flatten(2), b.flatten(2).transpose(1, 2)) / (h * w)


def fsp_loss(
    student_matrices: Sequence[torch.Tensor] | torch.Tensor,
    teacher_matrices: Sequence[torch.Tensor] | torch.Tensor,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""The FSP loss: weighted squared Frobenius distances between matrices, batch mean.

    .. math::
        \mathcal{L} = \sum_i \lambda_i \, \frac{1}{N} \sum_{x=1}^{N}
                      \big\| G_i^s(x) - G_i^t(x) \big\|_F^2

    Args:
        student_matrices: one ``[N, C1_i, C2_i]`` tensor per layer pair (or one tensor).
        teacher_matrices: the teacher's, same shapes; constants (no gradient flows into them).
        weights: ``λ_i``, one per pair; ``None`` gives every pair 1 (the paper's equal weights).

    Returns:
        A float32 scalar (computed in float32 even under autocast).
    """
    if isinstance(student_matrices, torch.Tensor):
        student_matrices = [student_matrices]
    if isinstance(teacher_matrices, torch.Tensor):
        teacher_matrices = [teacher_matrices]
    if len(student_matrices) != len(teacher_matrices) or not student_matrices:
        raise ValueError(
            "fsp_loss needs the same (non-zero) number of student and teacher matrices, got "
            f"{len(student_matrices)} and {len(teacher_matrices)}"
        )
    if weights is None:
        weights = [1.0] * len(student_matrices)
    elif len(weights) != len(student_matrices):
        raise ValueError(
            f"weights must have one value per pair ({len(student_matrices)}), got {len(weights)}"
        )
    device = student_matrices[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    with torch.autocast(device_type=device.type, enabled=False):
        for i, (s, t, weight) in enumerate(
            zip(student_matrices, teacher_matrices, weights, strict=True)
        ):
            if s.shape != t.shape:
                raise ValueError(
                    f"pair {i}: the student's FSP matrix is {tuple(s.shape)} but the teacher's "
                    f"is {tuple(t.shape)}; both must be [N, C1, C2] with the same channels"
                )
            check_not_empty(s, f"pair {i}: the student's FSP matrix")
            squared = (s.float() - t.detach().float()).pow(2).sum(dim=(1, 2))
            total = total + weight * squared.mean()
    return total
