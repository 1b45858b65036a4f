r"""Token-level divergences between a teacher's and a student's class distributions.

The kinds used to distil language models token by token (and usable on any logits): forward
and reverse KL, the generalised Jensen-Shannon divergence of GKD, DistiLLM's skew KLs and the
total variation distance. Each is a small function of the two log-probability tensors,
returning its per-class terms; :func:`divergence` looks the kind up in ``_KINDS``, sums the
terms over the classes and averages over the positions.

The teacher may be dense logits or a :class:`~distill.losses.sparse.TopK` read from an
offline store (see :mod:`distill.losses.sparse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import did_you_mean

from ..checks import check_fraction, check_temperature
from ._reduce import check_mask, check_not_empty, check_same_shape, masked_mean, shape_without
from .sparse import TopK, topk_buckets


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    r"""Per-class terms of :math:`\mathrm{KL}(a \| b) = \sum_c a_c (\log a_c - \log b_c)`.

    A class with :math:`a_c = 0` (its log -inf, or so low that ``exp`` underflows) adds 0
    even where :math:`b_c = 0` too. The "double where": the logs are replaced by 0 there
    *before* the product, so neither the value nor the gradient of the discarded branch
    (``0 * inf``) is NaN; the product is then exactly 0 with a zero gradient. Where
    :math:`a_c > 0 = b_c` the term is +inf, which is the divergence's true value.
    """
    a = log_a.exp()
    absent = a == 0
    log_a = log_a.masked_fill(absent, 0.0)
    log_b = log_b.masked_fill(absent, 0.0)
    return a * (log_a - log_b)


def _log(weight: float) -> float:
    """``log(weight)``, -inf for a weight of 0."""
    return math.log(weight) if weight > 0 else -math.inf


def _log_mix(log_a: Tensor, log_b: Tensor, weight: float) -> Tensor:
    r""":math:`\log(w\,a + (1 - w)\,b)` from :math:`\log a, \log b`, without leaving log space.

    Where both weighted terms are 0 the mixture is 0 (log -inf); those entries are summed as
    zeros first (double where again), since ``logaddexp(-inf, -inf)`` has a NaN gradient.
    """
    x = log_a + _log(weight)
    y = log_b + _log(1.0 - weight)
    empty = (x == -math.inf) & (y == -math.inf)
    mixed = torch.logaddexp(x.masked_fill(empty, 0.0), y.masked_fill(empty, 0.0))
    return mixed.masked_fill(empty, -math.inf)


# Each kind: per-class terms from the teacher's log p and the student's log q (same shape).
# ``beta`` and ``skew`` are passed to every kind; most ignore them.
Terms = Callable[[Tensor, Tensor, float, float], Tensor]


def _forward_kl(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\mathrm{KL}(p \| q)`: mode-covering (Hinton's KD without its :math:`T^2`)."""
    return _kl(log_p, log_q)


def _reverse_kl(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\mathrm{KL}(q \| p)`: mode-seeking (MiniLLM)."""
    return _kl(log_q, log_p)


def _jsd(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\beta\,\mathrm{KL}(p \| m) + (1-\beta)\,\mathrm{KL}(q \| m)`,
    :math:`m = \beta p + (1-\beta) q`; forward KL at :math:`\beta = 0`, reverse at 1."""
    if beta == 0.0:
        return _forward_kl(log_p, log_q, beta, skew)
    if beta == 1.0:
        return _reverse_kl(log_p, log_q, beta, skew)
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def _skew_forward_kl(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\mathrm{KL}(p \| \alpha p + (1-\alpha) q)` (DistiLLM's SKL)."""
    return _kl(log_p, _log_mix(log_p, log_q, skew))


def _skew_reverse_kl(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\mathrm{KL}(q \| \alpha q + (1-\alpha) p)` (DistiLLM's SRKL)."""
    return _kl(log_q, _log_mix(log_q, log_p, skew))


def _tvd(log_p: Tensor, log_q: Tensor, beta: float, skew: float) -> Tensor:
    r""":math:`\tfrac12 \sum_c |p_c - q_c|`."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs()


_KINDS: dict[str, Terms] = {
    "forward_kl": _forward_kl,
    "reverse_kl": _reverse_kl,
    "jsd": _jsd,
    "skew_forward_kl": _skew_forward_kl,
    "skew_reverse_kl": _skew_reverse_kl,
    "tvd": _tvd,
}

DIVERGENCES: tuple[str, ...] = tuple(_KINDS)
"""The names :func:`divergence` accepts as ``kind``."""


def divergence(
    student_logits: Tensor,
    teacher_logits: Tensor | TopK,
    kind: str,
    *,
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    dim: int = -1,
    mask: Tensor | None = None,
) -> Tensor:
    r"""A divergence between the teacher's and the student's distributions, per position.

    With :math:`p = \mathrm{softmax}(t/T)` (teacher) and :math:`q = \mathrm{softmax}(s/T)`
    (student) over the classes along ``dim``:

    .. math::
        \texttt{forward\_kl} &= \mathrm{KL}(p \| q) = \textstyle\sum_c p_c (\log p_c - \log q_c)
            \quad \text{(mode-covering; Hinton's KD)} \\
        \texttt{reverse\_kl} &= \mathrm{KL}(q \| p) \quad \text{(mode-seeking; MiniLLM)} \\
        \texttt{jsd} &= \beta\,\mathrm{KL}(p \| m) + (1-\beta)\,\mathrm{KL}(q \| m),
            \quad m = \beta p + (1-\beta) q \quad (0 < \beta < 1;\ \text{GKD}) \\
        \texttt{skew\_forward\_kl} &= \mathrm{KL}(p \| \alpha p + (1-\alpha) q) \\
        \texttt{skew\_reverse\_kl} &= \mathrm{KL}(q \| \alpha q + (1-\alpha) p)
            \quad (\alpha = \texttt{skew};\ \text{DistiLLM}) \\
        \texttt{tvd} &= \tfrac12 \textstyle\sum_c |p_c - q_c|

    summed over the classes and averaged over every other position (over ``mask``). There is
    **no** :math:`T^2` factor: a method that wants KD's gradient scale multiplies by it
    itself, so ``forward_kl`` at ``T`` equals ``kd_loss(s, t, T) / T**2``.

    Which end of ``beta`` is which KL: the formula for ``jsd`` is 0 at exactly
    :math:`\beta = 0` and :math:`\beta = 1`. There we define ``beta=0`` as the forward
    :math:`\mathrm{KL}(p \| q)` and ``beta=1`` as the reverse :math:`\mathrm{KL}(q \| p)` —
    the limits of :math:`\mathrm{JSD}_\beta / \beta` and :math:`\mathrm{JSD}_\beta / (1-\beta)`,
    and TRL's convention. The scale is therefore discontinuous at the ends: ``beta=1e-4``
    gives about :math:`10^{-4} \cdot \mathrm{KL}(p \| q)`, ``beta=0`` the full
    :math:`\mathrm{KL}(p \| q)`. Small ``beta`` leans forward, large ``beta`` reverse.

    The skew kinds follow DistiLLM (Ko et al. 2024): ``skew_forward_kl`` mixes a share
    :math:`\alpha` of the teacher into the student; ``skew_reverse_kl`` mixes a share
    :math:`\alpha` of the *student* into the teacher, :math:`(1-\alpha) p + \alpha q`, as in
    the paper's SRKL and its code. At :math:`\alpha = 0` they are the plain forward and reverse
    KL, at :math:`\alpha = 1` zero. (DistiLLM's code reports the skew forward KL's
    cross-entropy form, without the teacher's entropy; the gradient is the same, and the value
    here is the divergence itself, 0 when the student matches the teacher.)

    Numerics: everything is computed in float32 from log-probabilities (``log_softmax``;
    mixtures with ``logaddexp``), even for bf16/fp16 inputs or under autocast. Classes with
    probability exactly 0 (logits -inf, or underflow) add 0 with a finite gradient. A KL is
    +inf, its true value, only when its first argument puts mass where the second has none
    (e.g. ``reverse_kl`` with teacher logits -inf where the student's are finite); ``jsd``
    with ``0 < beta < 1``, the skew kinds with ``skew > 0`` and ``tvd`` stay finite. Rounding
    can make a position's sum slightly negative; each position's value is clamped at 0
    (after the sum), so the result is never negative.

    Args:
        student_logits: ``[N, C]``, ``[N, L, V]`` or any shape with classes along ``dim``.
        teacher_logits: dense logits of the same shape, or a :class:`TopK` from an offline
            store (its ``ids`` with ``k`` classes along ``dim``; see
            :func:`~distill.losses.sparse.topk_buckets`). Then every kind is computed over
            ``k + 1`` buckets, the teacher's ids plus one for the rest of the vocabulary,
            exactly as above when ``k = V``. A ``TopK``'s log-probabilities are taken to be
            at this ``temperature`` already (a store is built at its stage's temperature);
            only the student's logits are divided by ``T``. Either way the teacher is a
            constant: no gradient flows into it.
        kind: one of :data:`DIVERGENCES`.
        temperature: ``T``, finite and > 0.
        beta: ``jsd``'s weight in ``[0, 1]`` (GKD's :math:`\beta`; ends as described above).
        skew: the skew kinds' :math:`\alpha` in ``[0, 1]`` (DistiLLM: 0.1).
        dim: the class dimension.
        mask: optional boolean (or 0/1) tensor with the shape of the logits without ``dim``
            (``[N, L]`` for ``[N, L, V]`` logits); the result averages over the positions
            where it is true; what the teacher holds at the others (even inf or NaN) reaches
            neither the value nor the gradient.

    Returns:
        A float32 scalar, differentiable in ``student_logits`` only.

    Raises:
        ValueError: an unknown ``kind`` (with the closest name), ``beta`` or ``skew`` outside
            ``[0, 1]``, a ``temperature`` that is not finite and > 0, or a teacher (or
            ``mask``) whose shape does not fit ``student_logits``.
    """
    if kind not in _KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(DIVERGENCES)}; got {kind!r}"
            f"{did_you_mean(str(kind), DIVERGENCES)}"
        )
    terms = _KINDS[kind]
    temperature = check_temperature(temperature)
    beta = check_fraction(beta, "beta")
    skew = check_fraction(skew, "skew")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        log_p, log_q = _log_probs(student_logits, teacher_logits, temperature, dim)
        check_not_empty(log_p, "the batch")
        if mask is not None:
            # Masked-out positions become p = q (every log 0): their terms are exactly 0 with
            # no gradient, whatever the teacher held there (an inf or NaN would otherwise make
            # the gradient NaN through 0 * inf).
            mask = check_mask(mask, shape_without(log_p.shape, dim))
            outside = ~mask.unsqueeze(dim)
            log_p, log_q = log_p.masked_fill(outside, 0.0), log_q.masked_fill(outside, 0.0)
        per_position = terms(log_p, log_q, beta, skew).sum(dim=dim).clamp_min(0.0)
        return masked_mean(per_position, mask)


def _log_probs(
    student_logits: Tensor, teacher: Tensor | TopK, temperature: float, dim: int
) -> tuple[Tensor, Tensor]:
    """The teacher's and the student's float32 log-probabilities at ``temperature``."""
    student = student_logits.float() / temperature
    if isinstance(teacher, TopK):
        return topk_buckets(student, teacher, dim)
    check_same_shape(student_logits, teacher)
    log_p = F.log_softmax(teacher.detach().float() / temperature, dim=dim)
    return log_p, F.log_softmax(student, dim=dim)
