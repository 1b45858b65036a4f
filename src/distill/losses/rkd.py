r"""Relational knowledge distillation (Park, Kim, Lu and Cho, CVPR 2019).

The student matches the *structure* of the teacher's embeddings of a batch, not the
embeddings themselves: the distances between every pair and the angles of every triplet. Only
relations are compared, so the two embeddings may have different widths.

Defaults: distance weight 25, angle weight 50 (the paper's classification setting,
RepDistiller's ``RKDLoss``, mdistiller's ``RKD.DISTANCE_WEIGHT`` / ``ANGLE_WEIGHT``), applied by
:func:`rkd_loss`.
RepDistiller's CIFAR-100 script adds this to CE with weight 1 (``--distill rkd -a 0 -b 1``),
on the penultimate (pooled) features.

Like RepDistiller and mdistiller we average the Huber (smooth-L1, δ = 1) terms over all
:math:`N^2` pairs and :math:`N^3` triplets, including the pairs and triplets that repeat a
sample (their relations are 0 for both networks and add nothing but the count). The paper writes
sums over pairs and triplets; the mean differs by a constant factor, to which the weights above
belong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_nonnegative, check_positive


def _flatten(name: str, emb: torch.Tensor) -> torch.Tensor:
    if emb.dim() < 2 or emb.shape[0] < 2:
        raise ValueError(
            f"{name} must be a batch of at least 2 embeddings, [N, D] with N >= 2 (trailing "
            f"dimensions are flattened), got shape {tuple(emb.shape)}"
        )
    return emb.reshape(emb.shape[0], -1)


def _relations(emb: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pairwise distances [N, N] and triplet angle cosines [N, N, N]."""
    n = emb.shape[0]
    diff = emb.unsqueeze(0) - emb.unsqueeze(1)  # diff[i, j] = e_j - e_i
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=emb.device)
    distance = diff.pow(2).sum(dim=-1).clamp_min(eps).sqrt() * off_diagonal
    distance = distance / distance[off_diagonal].mean()
    # A difference shorter than sqrt(eps) has no direction: cosine 0 and no gradient (dividing
    # by a floor instead, as F.normalize does, gives gradients of order 1 / floor there).
    length = diff.norm(dim=-1, keepdim=True)
    coincident = length <= eps**0.5
    unit = torch.where(coincident, 0.0, diff / length.clamp_min(eps**0.5))
    angle = torch.bmm(unit, unit.transpose(1, 2))  # angle[i, j, k] = cos ∠(e_j, e_i, e_k)
    return distance, angle


def rkd_terms(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    *,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""RKD's distance and angle terms (unweighted).

    For a batch :math:`e_1..e_N` (student :math:`s`, teacher :math:`t`):

    .. math::
        \psi_D(e_i, e_j) = \frac{\|e_i - e_j\|_2}{\mu}, \quad
        \mu = \frac{1}{N(N-1)} \sum_{i \ne j} \|e_i - e_j\|_2, \qquad
        \psi_A(e_i, e_j, e_k) = \Big\langle \frac{e_j - e_i}{\|e_j - e_i\|_2},
                                           \frac{e_k - e_i}{\|e_k - e_i\|_2} \Big\rangle

    .. math::
        \mathrm{distance} = \frac{1}{N^2} \sum_{i,j} \ell_1^{sm}\big(\psi_D(s_i, s_j),
                                                                   \psi_D(t_i, t_j)\big),
        \qquad
        \mathrm{angle} = \frac{1}{N^3} \sum_{i,j,k} \ell_1^{sm}\big(\psi_A(s_i, s_j, s_k),
                                                                  \psi_A(t_i, t_j, t_k)\big)

    with :math:`\ell_1^{sm}` the smooth-L1 (Huber, δ = 1) loss; :math:`\psi_D(e_i, e_i) = 0`.
    A difference vector shorter than :math:`\sqrt{\epsilon}` (the diagonal; coincident
    embeddings, e.g. a sample twice in a batch) has no direction: its cosines are 0 and pass no
    gradient. The references normalise it by dividing by a floor of 1e-12, which gives the same
    values but gradients of order :math:`10^{10}` for coincident embeddings. :math:`\mu` is the
    mean over the :math:`N(N-1)` pairs of distinct positions (the reference's ``d > 0``
    selects exactly these, because it clamps every squared distance at ``eps`` first, as we
    do). The teacher's relations are constants.

    Memory: the angle term builds an ``[N, N, D]`` tensor of differences and ``[N, N, N]``
    cosines (as the references do); fine for the usual batches of 64-256.

    Args:
        student_emb: ``[N, D_s]`` (trailing dimensions are flattened), ``N ≥ 2``.
        teacher_emb: ``[N, D_t]``; ``D_t`` may differ from ``D_s``.
        eps: floor of the squared distances before the square root (the reference's 1e-12),
            so that the gradient stays finite for coincident embeddings; differences shorter
            than ``sqrt(eps)`` count as having no direction in the angle term.

    Returns:
        ``(distance, angle)``: two float32 scalars, computed in float32 even under autocast.
    """
    eps = check_positive(eps, "eps")
    s = _flatten("student_emb", student_emb)
    t = _flatten("teacher_emb", teacher_emb)
    if s.shape[0] != t.shape[0]:
        raise ValueError(
            f"student and teacher embeddings must come from the same batch, got "
            f"{s.shape[0]} and {t.shape[0]} rows"
        )
    with torch.autocast(device_type=s.device.type, enabled=False):
        s_distance, s_angle = _relations(s.float(), eps)
        with torch.no_grad():
            t_distance, t_angle = _relations(t.detach().float(), eps)
        distance = F.smooth_l1_loss(s_distance, t_distance)
        angle = F.smooth_l1_loss(s_angle, t_angle)
    return distance, angle


def rkd_loss(
    student_emb: torch.Tensor,
    teacher_emb: torch.Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> torch.Tensor:
    r"""RKD: :math:`w_D \cdot \mathrm{distance} + w_A \cdot \mathrm{angle}`.

    See :func:`rkd_terms`; the defaults 25 and 50 are the paper's (classification) and
    RepDistiller's.

    Returns:
        A float32 scalar.
    """
    distance_weight = check_nonnegative(distance_weight, "distance_weight")
    angle_weight = check_nonnegative(angle_weight, "angle_weight")
    distance, angle = rkd_terms(student_emb, teacher_emb)
    return distance_weight * distance + angle_weight * angle
