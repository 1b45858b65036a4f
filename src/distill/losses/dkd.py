r"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu and Liang, CVPR 2022).

The classic KD loss splits into a target-class term and a non-target-class term:

.. math::
    \mathrm{KD} = \mathrm{TCKD} + (1 - p^t_y)\,\mathrm{NCKD},

and DKD weights the two freely: :math:`\mathrm{DKD} = \alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}`.

Defaults (mdistiller, the authors' code): α = 1, β = 8, T = 4 on CIFAR-100 for
resnet32x4 → resnet8x4 (β is tuned per pair there: 6 for wrn-40-2 → wrn-16-2, 2 for
resnet56 → resnet20); its ImageNet configuration has β = 0.5, T = 1 (α left at 1). The total
loss is CE + min(epoch / 20, 1)·DKD on CIFAR-100 (a 1-epoch warm-up on ImageNet). **The warm-up
belongs to the method, not to these functions.**

Both terms are multiplied by :math:`T^2` and averaged over the batch, as mdistiller does
(``kl_div(..., size_average=False) * T**2 / batch``).

mdistiller removes the target class from the non-target distribution by subtracting 1000 from
the target logit after dividing by T, and takes the ``log`` of the student's summed
probabilities for TCKD. Both break on extreme logits: a target logit more than about 1000·T
above the others leaks into NCKD, and once the student's :math:`1 - p_y` underflows to 0 its
log is −∞ and the loss infinite or NaN. We compute every term in log space from log-sum-exps
over the non-target classes: the same values where mdistiller's are finite, and finite
everywhere.
"""

from __future__ import annotations

import torch

from ..checks import check_nonnegative, check_temperature
from ._reduce import check_mask, check_not_empty, check_same_shape, masked_mean


def _prepare(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    dim: int,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Classes moved last; targets as a long tensor, 0 where masked out; the mask checked."""
    check_same_shape(student_logits, teacher_logits)
    s = student_logits.movedim(dim, -1)
    t = teacher_logits.movedim(dim, -1)
    classes = s.shape[-1]
    if classes < 2:
        raise ValueError(
            f"DKD needs at least 2 classes along dim {dim}, got {classes} (logits shape "
            f"{tuple(student_logits.shape)})"
        )
    if targets.shape != s.shape[:-1]:
        raise ValueError(
            f"targets must have the logits' shape without the class dimension, "
            f"{list(s.shape[:-1])}; got {list(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be class indices (an integer tensor), got {targets.dtype}")
    check_not_empty(targets, "the batch")
    if mask is not None:
        mask = check_mask(mask, targets.shape)
    targets = targets.long()
    valid = targets if mask is None else targets[mask.bool()]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= classes):
        bad = valid[(valid < 0) | (valid >= classes)][0].item()
        raise ValueError(f"targets must lie in [0, {classes - 1}] (the classes), got {bad}")
    if mask is not None:
        targets = targets.masked_fill(~mask.bool(), 0)  # e.g. -100 at padding: any valid class
    return s, t, targets, mask


def _log_parts(z: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log p_y, log(1 - p_y) and the non-target log-probabilities (log-space, all finite)."""
    log_all = torch.logsumexp(z, dim=-1)
    log_other = torch.logsumexp(z.masked_fill(target_mask, float("-inf")), dim=-1)
    z_target = (z * target_mask).sum(dim=-1)
    log_p_target = z_target - log_all
    log_p_other = log_other - log_all
    # log p̂_c = z_c - logsumexp_{k≠y} z_k; finite at c = y as well, where it is never used.
    log_p_hat = z - log_other.unsqueeze(-1)
    return log_p_target, log_p_other, log_p_hat


def dkd_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 4.0,
    *,
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The target-class and non-target-class terms of DKD, each times :math:`T^2`.

    With :math:`p = \mathrm{softmax}(z/T)`, the binary distributions
    :math:`b = [p_y,\ 1 - p_y]` and the non-target distributions
    :math:`\hat p_c = p_c / (1 - p_y) = \mathrm{softmax}_{c \ne y}(z_c/T)` for :math:`c \ne y`:

    .. math::
        \mathrm{TCKD} = T^2\, \mathrm{KL}(b^t \| b^s)
                      = T^2 \sum_{k \in \{y, \lnot y\}} b^t_k (\log b^t_k - \log b^s_k),
        \qquad
        \mathrm{NCKD} = T^2\, \mathrm{KL}(\hat p^t \| \hat p^s)
                      = T^2 \sum_{c \ne y} \hat p^t_c (\log \hat p^t_c - \log \hat p^s_c)

    each averaged over the batch (and any other position; over ``mask`` when given).

    Args:
        student_logits: ``[N, C]`` (or any shape with ``C ≥ 2`` classes along ``dim``).
        teacher_logits: the same shape; a constant (no gradient flows into it).
        targets: class indices, the logits' shape without ``dim`` (``[N]`` for ``[N, C]``).
            Where ``mask`` is false any value (e.g. ``-100``) is allowed.
        temperature: ``T > 0`` (4 on CIFAR-100).
        dim: the class dimension.
        mask: optional boolean tensor of the targets' shape; positions where it is false are
            left out of the means.

    Returns:
        ``(tckd, nckd)``: two float32 scalars, computed in float32 even under autocast.
    """
    temperature = check_temperature(temperature)
    s, t, targets, mask = _prepare(student_logits, teacher_logits, targets, dim, mask)
    with torch.autocast(device_type=s.device.type, enabled=False):
        target_mask = torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        target_mask.scatter_(-1, targets.unsqueeze(-1), True)
        s_target, s_other, s_hat = _log_parts(s.float() / temperature, target_mask)
        t_target, t_other, t_hat = _log_parts(t.detach().float() / temperature, target_mask)
        tckd = t_target.exp() * (t_target - s_target) + t_other.exp() * (t_other - s_other)
        # The teacher is a constant, so zeroing its target-class weight costs no gradient.
        t_weight = t_hat.exp().masked_fill(target_mask, 0.0)
        nckd = (t_weight * (t_hat - s_hat)).sum(dim=-1)
        scale = temperature**2
        return masked_mean(tckd, mask) * scale, masked_mean(nckd, mask) * scale


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    *,
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Decoupled KD: :math:`\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}` (see :func:`dkd_terms`).

    With :math:`\alpha = 1` and :math:`\beta = 1 - p^t_y` per sample this is classic KD; DKD
    instead gives NCKD a fixed, larger weight. Defaults are the CIFAR-100 ones (α = 1, β = 8,
    T = 4); the linear warm-up of the paper is the method's.

    Args:
        student_logits, teacher_logits, targets, temperature, dim, mask: as for
            :func:`dkd_terms`.
        alpha: weight of TCKD, ≥ 0.
        beta: weight of NCKD, ≥ 0.

    Returns:
        A float32 scalar.
    """
    alpha = check_nonnegative(alpha, "alpha")
    beta = check_nonnegative(beta, "beta")
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, temperature, dim=dim, mask=mask)
    return alpha * tckd + beta * nckd
