r"""Attention transfer (Zagoruyko and Komodakis, ICLR 2017).

Which form of the loss we use
-----------------------------
The paper writes, for layer pairs :math:`j`,

.. math::
    \mathcal{L}_{AT} = \frac{\beta}{2} \sum_j \big\| q_s^j - q_t^j \big\|_2,
    \qquad q = \frac{\mathrm{vec}(F(A))}{\|\mathrm{vec}(F(A))\|_2}

(the p-norm of the difference, not its square) and says that in practice β is 10³ divided by
the number of elements in the attention map and the batch size. The authors' code, RepDistiller
and mdistiller all compute exactly that practical form: the *mean over the batch and the
positions of the squared difference* of the normalised maps, per pair, summed over the pairs,
times β = 1000 (RepDistiller's CIFAR-100 script: ``--distill attention -a 0 -b 1000``;
mdistiller: ``AT.LOSS.FEAT_WEIGHT = 1000``, ``AT.P = 2``). We follow that form, because the
published CIFAR-100 figures we compare against (REFERENCES.md: resnet32x4 → resnet8x4 73.44,
wrn-40-2 → wrn-16-2 74.08) come from RepDistiller's code. **β is applied by the method, not by
these functions.**

RepDistiller and mdistiller compare the student's and teacher's group outputs (their
``feat[1:-1]``: every stage output except the stem and the pooled vector).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..checks import check_positive
from ._reduce import check_not_empty


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""The spatial attention map of a feature map, flattened and L2-normalised per sample.

    .. math::
        Q_{n,i} = \frac{1}{C} \sum_{c=1}^{C} |A_{n,c,i}|^p, \qquad
        q_n = \frac{Q_n}{\max(\|Q_n\|_2, 10^{-12})}

    for the :math:`H \cdot W` positions :math:`i`. The paper's :math:`F^p_{sum}` sums over the
    channels; the mean differs by the factor :math:`C`, which the normalisation removes. The
    references write ``f.pow(p)``, equal to :math:`|f|^p` for the even ``p = 2`` everyone uses;
    we take the absolute value as the paper does, so odd ``p`` also gives a non-negative map.
    An all-zero map stays zero (no NaN).

    Args:
        feature: ``[N, C, H, W]``.
        p: the exponent, > 0 (the paper and the references: 2).

    Returns:
        ``[N, H·W]`` float32 (computed in float32 even under autocast).
    """
    p = check_positive(p, "p")
    if feature.dim() != 4:
        raise ValueError(
            f"attention_map needs an [N, C, H, W] feature map, got shape {tuple(feature.shape)}"
        )
    with torch.autocast(device_type=feature.device.type, enabled=False):
        x = feature.float().abs()
        powered = x * x if p == 2.0 else x.pow(p)
        return F.normalize(powered.mean(dim=1).flatten(1), p=2.0, dim=1)


def _pool_to(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(feature.shape[2:]) == size:
        return feature
    return F.adaptive_avg_pool2d(feature, size)


def at_terms(
    student_features: Sequence[torch.Tensor] | torch.Tensor,
    teacher_features: Sequence[torch.Tensor] | torch.Tensor,
    p: float = 2.0,
) -> list[torch.Tensor]:
    r"""The attention-transfer term of each layer pair, kept apart for logging.

    .. math::
        \ell_j = \frac{1}{N \cdot h_j w_j} \sum_{n=1}^{N} \sum_{i=1}^{h_j w_j}
                 \big(q^j_{s,n,i} - q^j_{t,n,i}\big)^2

    When the two maps of a pair differ in spatial size, the larger *feature map* is pooled to
    :math:`h = \min(H_s, H_t)`, :math:`w = \min(W_s, W_t)` with adaptive average pooling before
    its attention map is taken, as RepDistiller and mdistiller do (they compare the heights only
    and pool to a square of the smaller height; for the square maps they handle this is the
    same). Channels need not match. See :func:`at_loss` for the arguments.

    Returns:
        One float32 scalar per pair, in the order of the pairs.
    """
    if isinstance(student_features, torch.Tensor):
        student_features = [student_features]
    if isinstance(teacher_features, torch.Tensor):
        teacher_features = [teacher_features]
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            "at_loss needs the same (non-zero) number of student and teacher feature maps, got "
            f"{len(student_features)} and {len(teacher_features)}"
        )
    p = check_positive(p, "p")
    terms = []
    for j, (s, t) in enumerate(zip(student_features, teacher_features, strict=True)):
        if s.dim() != 4 or t.dim() != 4:
            raise ValueError(
                f"pair {j}: attention transfer needs [N, C, H, W] feature maps, got shapes "
                f"{tuple(s.shape)} (student) and {tuple(t.shape)} (teacher)"
            )
        if s.shape[0] != t.shape[0]:
            raise ValueError(
                f"pair {j}: the student's and teacher's maps must come from the same batch, got "
                f"batch sizes {s.shape[0]} and {t.shape[0]}"
            )
        check_not_empty(s, f"pair {j}: the student's map")
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        with torch.autocast(device_type=s.device.type, enabled=False):
            q_s = attention_map(_pool_to(s.float(), size), p)
            q_t = attention_map(_pool_to(t.detach().float(), size), p)
            terms.append((q_s - q_t).pow(2).mean())
    return terms


def at_loss(
    student_features: Sequence[torch.Tensor] | torch.Tensor,
    teacher_features: Sequence[torch.Tensor] | torch.Tensor,
    p: float = 2.0,
) -> torch.Tensor:
    r"""Attention-transfer loss over layer pairs (RepDistiller's CIFAR form, without β).

    .. math::
        \mathcal{L} = \sum_j \frac{1}{N \cdot h_j w_j} \sum_{n, i}
                      \big(q^j_{s,n,i} - q^j_{t,n,i}\big)^2

    with :math:`q` from :func:`attention_map`. The method multiplies this by β (1000 in
    RepDistiller and mdistiller); see the module docstring for how it relates to the paper's
    :math:`\tfrac{\beta}{2}\sum_j \|q_s^j - q_t^j\|_2`.

    Args:
        student_features: one ``[N, C_j, H_j, W_j]`` map per pair (or one tensor).
        teacher_features: the teacher's maps, ``[N, C'_j, H'_j, W'_j]``; constants (no gradient
            flows into them). Channels may differ from the student's; spatial sizes may differ
            too (the larger map is average-pooled to the smaller, see :func:`at_terms`).
        p: the exponent of the attention map (2).

    Returns:
        A float32 scalar, computed in float32 even under autocast.
    """
    return torch.stack(at_terms(student_features, teacher_features, p)).sum()
