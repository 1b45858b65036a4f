r"""Teacher distributions kept as their top-k classes plus the mass of all the others.

An offline teacher store cannot keep a language model's whole distribution for every token
(``[tokens, V]`` floats); it keeps, per position, the ``k`` most likely token ids, their
log-probabilities and the log of the mass left over. :func:`topk_buckets` turns such a
:class:`TopK` and the student's logits into two distributions over the same ``k + 1``
*buckets* — the ``k`` ids and one bucket "every other id" — on which
:func:`distill.losses.divergences.divergence` computes any divergence.

Why one bucket for the rest, and not the leftover mass spread over the ``V − k`` other ids
(uniformly, or in the student's proportions): the store knows how much mass the teacher puts
outside its top k, not how it splits it. Spreading it would invent a target for ids the
teacher never ranked (a uniform spread is label smoothing of the tail) and would cost a
``[.., V]`` term again. The bucketed distributions are the two full distributions seen
through the same partition of the vocabulary, so every divergence between them is an honest
one: never more than the full divergence (data-processing inequality; for KL(p ‖ q) the
difference is exactly p's tail mass times the KL between the two tails, each renormalised),
equal to it when ``k = V``, and independent of ``V``. It still asks the student to put
exactly the teacher's leftover mass outside the teacher's top k, which renormalising over the
top k alone would not.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..checks import check_temperature
from ._reduce import shape_without


class TopK(NamedTuple):
    r"""A teacher distribution as its ``k`` most likely classes and the log of the rest's mass.

    With classes along ``dim`` of logits of shape ``S`` (e.g. ``[N, L, V]``, ``dim=-1``):

    Attributes:
        ids: integer class ids, shape ``S`` with ``dim`` of size ``k`` (``[N, L, k]``),
            distinct along ``dim``.
        logprobs: the teacher's log-probabilities of ``ids``, same shape, at the temperature
            of the loss that reads them (a store is built at its stage's temperature).
        rest: ``log(1 - sum(exp(logprobs)))`` along ``dim``, shape ``S`` without ``dim``
            (``[N, L]``): the log of the mass on every other class; ``-inf`` when there is
            none. When ``ids`` cover all ``V`` classes it is ignored (taken as ``-inf``), so
            a store's rounding there does no harm.

    A named tuple, so ``default_collate`` batches it field by field.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor


def topk_from_logits(
    teacher_logits: torch.Tensor, k: int, temperature: float = 1.0, *, dim: int = -1
) -> TopK:
    r"""The teacher's ``k`` most likely classes at temperature ``T``, and the rest's mass.

    .. math::
        \log p = \mathrm{log\_softmax}(t / T), \quad
        \text{ids} = \mathrm{topk}_k(\log p), \quad
        \text{rest} = \log \sum_{c \notin \text{ids}} p_c

    ``rest`` is a log-sum-exp over the classes left out (not ``log1p(-sum(p_ids))``, which
    loses every digit when the top k hold nearly all the mass), and ``-inf`` when ``k = V``.

    Args:
        teacher_logits: any shape with classes along ``dim`` (``[N, C]``, ``[N, L, V]``).
        k: ``1 <= k <= V``.
        temperature: ``T > 0``; use the temperature of the loss that will read the result.
        dim: the class dimension.

    Returns:
        A :class:`TopK` with float32 ``logprobs`` and ``rest``, sorted by decreasing
        probability, detached from the graph.
    """
    temperature = check_temperature(temperature)
    classes = teacher_logits.shape[dim]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= classes:
        raise ValueError(
            f"k must be an integer in [1, {classes}] (the size of dimension {dim}), got {k!r}"
        )
    with torch.no_grad(), torch.autocast(teacher_logits.device.type, enabled=False):
        log_p = F.log_softmax(teacher_logits.float() / temperature, dim=dim)
        logprobs, ids = log_p.topk(k, dim=dim)
        return TopK(ids, logprobs, log_rest(log_p, ids, dim))


def log_rest(log_probs: torch.Tensor, ids: torch.Tensor, dim: int) -> torch.Tensor:
    """The log of the mass outside ``ids``: log-sum-exp of ``log_probs`` over the other classes.

    Exact however small that mass is; ``-inf`` (with a zero, not NaN, gradient) when ``ids``
    cover every class or every other class has probability 0. Shape: ``log_probs``'s
    without ``dim``.
    """
    others = log_probs.scatter(dim, ids, -math.inf)
    # Double where: a row of -inf only would give logsumexp a NaN gradient, so such rows are
    # summed as zeros and then set to -inf, which passes no gradient back.
    empty = (others == -math.inf).all(dim=dim, keepdim=True)
    total = torch.logsumexp(others.masked_fill(empty, 0.0), dim=dim, keepdim=True)
    return total.masked_fill(empty, -math.inf).squeeze(dim)


def topk_buckets(
    student_logits: torch.Tensor, teacher: TopK, dim: int = -1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Teacher and student log-probabilities over the teacher's ``k`` ids and one "rest" bucket.

    .. math::
        \log p = [\text{logprobs};\ \text{rest}], \qquad
        \log q = [\log q_{\text{ids}};\ \log \textstyle\sum_{c \notin \text{ids}} q_c],
        \quad \log q = \mathrm{log\_softmax}(s)

    Args:
        student_logits: the student's logits, already divided by the temperature; any shape
            with classes along ``dim``.
        teacher: a :class:`TopK` matching ``student_logits`` (see there); detached here.
        dim: the class dimension, of ``student_logits`` and of ``teacher.ids``.

    Returns:
        ``(log_p, log_q)``: float32, ``student_logits``'s shape with ``dim`` of size ``k + 1``
        (the rest last). The teacher's buckets are used as stored, not renormalised.
    """
    _check_topk(student_logits.shape, teacher, dim)
    ids = teacher.ids.long()
    classes, k = student_logits.shape[dim], ids.shape[dim]
    log_q = F.log_softmax(student_logits.float(), dim=dim)
    rest_q = log_rest(log_q, ids, dim)
    rest_p = teacher.rest.detach().float()
    if k == classes:
        rest_p = torch.full_like(rest_p, -math.inf)
    log_p = torch.cat([teacher.logprobs.detach().float(), rest_p.unsqueeze(dim)], dim=dim)
    log_q = torch.cat([log_q.gather(dim, ids), rest_q.unsqueeze(dim)], dim=dim)
    return log_p, log_q


def _check_topk(shape: torch.Size, teacher: TopK, dim: int) -> None:
    """ValueError naming the field of ``teacher`` that does not fit logits of ``shape``."""
    ids, logprobs, rest = teacher
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"teacher.ids must hold integer class ids, got dtype {ids.dtype}")
    if ids.dim() != len(shape):
        raise ValueError(
            f"teacher.ids must have as many dimensions as the student logits {tuple(shape)}, "
            f"got shape {tuple(ids.shape)}"
        )
    axis = dim % len(shape)
    positions = shape_without(shape, dim)
    k = ids.shape[axis]
    if shape_without(ids.shape, dim) != positions or not 1 <= k <= shape[axis]:
        expected = list(shape)
        expected[axis] = "k"
        raise ValueError(
            f"teacher.ids must have the student logits' shape with k <= {shape[axis]} classes "
            f"along dimension {dim}, {expected}; got {list(ids.shape)}"
        )
    if logprobs.shape != ids.shape:
        raise ValueError(
            f"teacher.logprobs must have the shape of teacher.ids, {tuple(ids.shape)}; got "
            f"{tuple(logprobs.shape)}"
        )
    if rest.shape != positions:
        raise ValueError(
            f"teacher.rest must have the student logits' shape without dimension {dim}, "
            f"{tuple(positions)}; got {tuple(rest.shape)}"
        )
