r"""Divergences from a stored top-k teacher whose positions keep different numbers of ids.

A teacher store built with top-p keeps, per position, only as many of the teacher's most
likely ids as reach the probability ``p`` (at most ``k``), so one batch holds positions with
different numbers of ids. It is read back as one :class:`~distill.losses.sparse.TopK` of the
batch's largest width ``w``, a position keeping ``c < w`` ids having log-probability ``-inf``
in its last ``w − c`` slots. Those slots must not become buckets of their own (the teacher's
mass there is unknown, not zero: it is part of the rest), so :func:`topk_divergence` computes
each group of positions with one width on exactly its kept ids, with
:func:`~distill.losses.divergences.divergence`, and averages over all positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .divergences import divergence
from .sparse import TopK


def topk_divergence(
    student_logits: Tensor,
    teacher: TopK,
    kind: str,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    r""":func:`~distill.losses.divergences.divergence` from a :class:`TopK` teacher whose slots
    with log-probability ``-inf`` are not kept ids but part of the rest bucket.

    With :math:`K_n` the ids position :math:`n` keeps (its slots with a finite log-probability),

    .. math::
        \mathcal{L} = \frac{1}{|M|} \sum_{n \in M}
            D\big([p_{K_n};\, p^{\text{rest}}_n],\ [q_{K_n};\, 1 - q(K_n)]\big)

    over the positions :math:`M` of ``mask`` (all when ``None``): each position is bucketed on
    its own kept ids plus one rest bucket, as :func:`~distill.losses.sparse.topk_buckets` does
    for a fixed ``k``. When every position keeps all its slots this is one call of
    ``divergence``; otherwise positions are grouped by their number of kept ids (one call per
    group). A kept id with probability 0 may equally be folded into the rest: that changes no
    bucket's teacher mass.

    Args:
        student_logits: ``[..., V]``, classes last.
        teacher: a :class:`TopK` of ``student_logits``'s shape with ``k`` slots last (its
            ``rest`` the log of the mass outside the *kept* ids); kept slots come first at
            each position, as :func:`~distill.losses.sparse.topk_from_logits` and the store
            give them (sorted by decreasing probability).
        kind, temperature, beta, skew: as for ``divergence`` (the teacher's log-probabilities
            are taken to be at ``temperature`` already; no :math:`T^2` factor).
        mask: boolean ``[...]`` (the logits' shape without classes), or ``None``.

    Returns:
        A float32 scalar, differentiable in ``student_logits`` only.
    """
    options = {"temperature": temperature, "beta": beta, "skew": skew}
    kept = teacher.logprobs > -torch.inf
    where = kept.all(dim=-1) if mask is None else kept.all(dim=-1) | ~mask.bool()
    if bool(where.all()):
        return divergence(student_logits, teacher, kind, mask=mask, **options)
    k, classes = kept.shape[-1], student_logits.shape[-1]
    rows = torch.ones(kept.shape[:-1], dtype=torch.bool, device=kept.device)
    if mask is not None:
        rows = rows & mask.bool()
    rows = rows.reshape(-1)
    # Kept slots first (a stable sort keeps their order), then one group per width.
    order = kept.reshape(-1, k)[rows].to(torch.int8).argsort(dim=-1, descending=True, stable=True)
    ids = teacher.ids.reshape(-1, k)[rows].gather(-1, order)
    logprobs = teacher.logprobs.reshape(-1, k)[rows].gather(-1, order)
    rest = teacher.rest.reshape(-1)[rows]
    student = student_logits.reshape(-1, classes)[rows]
    widths = kept.reshape(-1, k)[rows].sum(dim=-1)
    total = student_logits.new_zeros((), dtype=torch.float32)
    for width in torch.unique(widths).tolist():
        group = widths == width
        if width == 0:  # every id in the rest bucket: both sides put all their mass there
            continue
        part = TopK(ids[group, :width], logprobs[group, :width], rest[group])
        total = total + divergence(student[group], part, kind, **options) * group.sum()
    return total / max(int(rows.sum()), 1)
