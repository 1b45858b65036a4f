"""Classic soft-label distillation loss (Hinton, Vinyals and Dean 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_temperature
from ._reduce import check_not_empty, check_same_shape, masked_mean


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    *,
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft-label distillation loss.

    .. math::
        \mathcal{L} = T^2 \cdot \mathrm{KL}(p^t \| p^s)
                    = T^2 \sum_c p^t_c \,(\log p^t_c - \log p^s_c),
        \quad p^t = \mathrm{softmax}(t/T),\; p^s = \mathrm{softmax}(s/T)

    summed over the class dimension ``dim`` and averaged over every other position. The
    :math:`T^2` factor keeps the gradient's scale independent of ``T``.

    Args:
        student_logits: ``[N, C]``, ``[N, L, V]`` or any shape with classes along ``dim``.
        teacher_logits: same shape as ``student_logits``. Treated as a constant: no gradient
            flows into it.
        temperature: ``T > 0``.
        dim: the class dimension.
        mask: optional boolean (or 0/1) tensor with the shape of the logits without ``dim``
            (e.g. ``[N, L]`` for ``[N, L, V]`` logits); the loss averages over positions where
            it is true.

    Returns:
        A float32 scalar. For ``[N, C]`` logits it equals
        ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T**2``.
        Computed in float32 even under autocast.
    """
    temperature = check_temperature(temperature)
    check_same_shape(student_logits, teacher_logits)
    check_not_empty(student_logits, "student_logits")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = student_logits.float() / temperature
        t = teacher_logits.detach().float() / temperature
        log_p_s = F.log_softmax(s, dim=dim)
        log_p_t = F.log_softmax(t, dim=dim)
        per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=dim)
        return masked_mean(per_position, mask) * (temperature**2)
