"""Deep mutual learning loss (Zhang, Xiang, Hospedales and Lu, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checks import check_temperature
from ._reduce import check_mask, check_not_empty, masked_mean
from .kd import kd_loss


def _cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, dim: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy with classes along ``dim``, averaged over the (unmasked) positions."""
    if targets.shape != logits.shape[:dim] + logits.shape[dim:][1:]:
        # Spell the expected shape out: F.cross_entropy's own message is about "batch size".
        expected = list(logits.shape)
        del expected[dim]
        raise ValueError(
            f"targets must have the logits' shape without the class dimension, {expected}; got "
            f"{list(targets.shape)}"
        )
    check_not_empty(targets, "the batch")
    if mask is not None:
        # Positions left out may hold an ignore label such as -100: gather a valid class there.
        mask = check_mask(mask, targets.shape)
        targets = targets.masked_fill(~mask, 0)
    log_p = F.log_softmax(logits.float(), dim=dim)
    per_position = -log_p.gather(dim, targets.unsqueeze(dim)).squeeze(dim)
    return masked_mean(per_position, mask)


def mutual_terms(
    logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    fixed: Sequence[torch.Tensor] = (),
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    r"""The two terms of each cohort member's mutual-learning loss, kept apart for logging.

    For learners :math:`k = 1..K_\ell` among :math:`K = K_\ell + K_f` cohort members (``fixed``
    adds :math:`K_f` members that only teach, e.g. a pretrained teacher):

    .. math::
        \mathrm{ce}_k = \mathrm{CE}(z_k, y), \qquad
        \mathrm{kl}_k = \frac{1}{K-1} \sum_{l \ne k} T^2\,
                        \mathrm{KL}\big(p_l \,\|\, p_k\big),
        \quad p_l = \mathrm{softmax}(z_l / T)

    where :math:`l` runs over every other member, learners and fixed ones alike, and every
    :math:`p_l` is detached. See :func:`mutual_loss` for the arguments.

    Returns:
        ``(ce, kl)``: two lists of ``len(logits)`` float32 scalars.
    """
    members = len(logits) + len(fixed)
    if len(logits) < 1 or members < 2:
        raise ValueError(
            "mutual learning needs a cohort of at least 2 members with at least one learner; "
            f"got {len(logits)} learner(s) and {len(fixed)} fixed member(s)"
        )
    check_temperature(temperature)
    every = [*logits, *fixed]
    shape = every[0].shape
    for index, z in enumerate(every):
        if z.shape != shape:
            raise ValueError(
                f"every cohort member's logits must have the same shape; member 0 has "
                f"{tuple(shape)}, member {index} has {tuple(z.shape)}"
            )
    with torch.autocast(device_type=every[0].device.type, enabled=False):
        ce = [_cross_entropy(z, targets, dim, mask) for z in logits]
        kl = []
        for k, z_k in enumerate(logits):
            # kd_loss(student, teacher) = T²·KL(softmax(teacher/T) ‖ softmax(student/T)) with the
            # teacher detached and a per-position (batch) mean: exactly one peer term of member k.
            peers = [z for j, z in enumerate(every) if j != k]
            total = sum(kd_loss(z_k, z_l, temperature, dim=dim, mask=mask) for z_l in peers)
            kl.append(total / (members - 1))
    return ce, kl


def mutual_loss(
    logits: Sequence[torch.Tensor],
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    fixed: Sequence[torch.Tensor] = (),
    dim: int = -1,
    mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    r"""Deep mutual learning: one loss per member of a cohort trained together.

    .. math::
        \mathcal{L}_k = \mathrm{CE}(z_k, y)
            + \frac{1}{K-1} \sum_{l \ne k} T^2\,\mathrm{KL}\big(p_l \,\|\, p_k\big),
        \qquad p_l = \mathrm{softmax}(z_l / T)

    Each peer's :math:`p_l` is detached, so the gradient of :math:`\mathcal{L}_k` reaches only
    :math:`z_k`: summing the losses and calling ``backward()`` once gives every member its own
    gradient. KL is summed over the classes and averaged over the batch (and any other
    position), like ``kl_div(..., reduction="batchmean")``; an element mean would shrink the
    mutual term by the number of classes.

    Args:
        logits: ``K`` tensors of the same shape (``[N, C]``, ``[N, L, V]``...; classes along
            ``dim``), one per learning member.
        targets: class indices, the logits' shape without ``dim`` (``[N]`` for ``[N, C]``).
        temperature: ``T > 0`` for the KL term (the paper: 1). CE always uses the raw logits.
        fixed: logits of members that teach but do not learn (a pretrained teacher joining the
            cohort); they count in ``K`` and are peers of every learner, and get no loss.
        dim: the class dimension.
        mask: optional boolean tensor of the logits' shape without ``dim``; both terms average
            over the positions where it is true.

    Returns:
        ``len(logits)`` float32 scalars, in the order of ``logits``. Computed in float32 even
        under autocast.
    """
    ce, kl = mutual_terms(logits, targets, temperature, fixed=fixed, dim=dim, mask=mask)
    return [c + d for c, d in zip(ce, kl, strict=True)]
