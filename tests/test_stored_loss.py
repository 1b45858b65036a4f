"""topk_divergence: a stored top-k teacher whose positions keep different numbers of ids, against
each divergence written out by hand over that position's buckets (its kept ids and one for
the rest); values and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses import DIVERGENCES, divergence, topk_from_logits
from distill.losses.sparse import TopK
from distill.losses.stored import topk_divergence

T, BETA, SKEW = 2.0, 0.3, 0.1


def naive(p: list[float], q: list[float], kind: str) -> torch.Tensor:
    """One position's divergence between two bucket distributions, term by term (``p`` the
    teacher's floats, ``q`` the student's tensors)."""
    total = torch.zeros((), dtype=torch.float64)
    for a, b in zip(p, q, strict=True):
        if kind == "forward_kl":
            total = total + (a * (math.log(a) - torch.log(b)) if a > 0 else 0.0)
        elif kind == "reverse_kl":
            total = total + b * (torch.log(b) - math.log(a))
        elif kind == "jsd":
            m = BETA * a + (1 - BETA) * b
            left = a * (math.log(a) - torch.log(m)) if a > 0 else 0.0
            total = total + BETA * left + (1 - BETA) * b * (torch.log(b) - torch.log(m))
        elif kind == "skew_forward_kl":
            m = SKEW * a + (1 - SKEW) * b
            total = total + (a * (math.log(a) - torch.log(m)) if a > 0 else 0.0)
        elif kind == "skew_reverse_kl":
            m = SKEW * b + (1 - SKEW) * a
            total = total + b * (torch.log(b) - torch.log(m))
        elif kind == "tvd":
            total = total + 0.5 * (a - b).abs()
    return total


def ragged() -> tuple[torch.Tensor, TopK, list[int]]:
    """Student logits [2, 3, 10] and a teacher keeping 4 ids at most: 4, 2, 1 ids at the
    positions of the first sequence, 3, 4, 4 at the second's."""
    torch.manual_seed(0)
    student = torch.randn(2, 3, 10, dtype=torch.float64)
    top = topk_from_logits(3 * torch.randn(2, 3, 10), 4, T)
    kept = [4, 2, 1, 3, 4, 4]
    logprobs = top.logprobs.double().clone().reshape(6, 4)
    rest = top.rest.double().clone().reshape(6)
    for n, c in enumerate(kept):
        dropped = torch.cat([logprobs[n, c:], rest[n : n + 1]])
        rest[n] = torch.logsumexp(dropped, 0)
        logprobs[n, c:] = -math.inf
    return student, TopK(top.ids, logprobs.reshape(2, 3, 4), rest.reshape(2, 3)), kept


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_each_position_is_bucketed_on_its_own_kept_ids(kind: str) -> None:
    student, teacher, kept = ragged()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    s1 = student.clone().requires_grad_(True)
    got = topk_divergence(s1, teacher, kind, temperature=T, beta=BETA, skew=SKEW, mask=mask)
    got.backward()
    s2 = student.clone().requires_grad_(True)
    q_all = torch.softmax(s2 / T, dim=-1).reshape(6, 10)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for n, c in enumerate(kept):
        if not mask.reshape(6)[n]:
            continue
        ids = teacher.ids.reshape(6, 4)[n, :c].tolist()
        p = [math.exp(x) for x in teacher.logprobs.reshape(6, 4)[n, :c].tolist()]
        p.append(math.exp(float(teacher.rest.reshape(6)[n])))
        q = [q_all[n, i] for i in ids]
        q.append(1 - sum(q))
        total, count = total + naive(p, q, kind), count + 1
    want = total / count
    want.backward()
    assert torch.allclose(got.double(), want, atol=1e-5), (got, want)
    assert torch.allclose(s1.grad, s2.grad, atol=1e-5)
    assert s1.grad[0, 2].abs().max() == 0  # a masked position gives nothing


def test_with_every_slot_kept_it_is_the_plain_divergence() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 12), topk_from_logits(torch.randn(3, 5, 12), 6, T)
    for kind in DIVERGENCES:
        a = topk_divergence(student, teacher, kind, temperature=T, beta=BETA)
        b = divergence(student, teacher, kind, temperature=T, beta=BETA)
        assert torch.equal(a, b)


def test_masked_positions_may_hold_anything() -> None:
    student, teacher, _ = ragged()
    mask = torch.tensor([[True, False, False], [False, True, True]])
    garbage = teacher.logprobs.clone()
    garbage[0, 1] = -math.inf  # a masked position keeping nothing
    a = topk_divergence(student, teacher, "reverse_kl", temperature=T, mask=mask)
    b = topk_divergence(student, TopK(teacher.ids, garbage, teacher.rest), "reverse_kl",
                        temperature=T, mask=mask)
    assert torch.equal(a, b) and torch.isfinite(a)
