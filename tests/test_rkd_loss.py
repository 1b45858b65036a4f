"""RKD against its formula written out with loops, and against RepDistiller's form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.rkd import rkd_loss, rkd_terms


def huber(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * x if abs(float(x.detach())) < 1 else abs(x) - 0.5


def naive_rkd(s: torch.Tensor, t: torch.Tensor):
    """Distance and angle terms from explicit pairs and triplets (float64 loops)."""
    s, t = s.double(), t.double()
    n = s.shape[0]

    def dist(e, i, j):
        if (e[i] - e[j]).abs().sum() == 0:
            return torch.zeros((), dtype=torch.float64)
        return torch.sqrt(((e[i] - e[j]) ** 2).sum())

    def mu(e):
        return sum(dist(e, i, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))

    def cos(e, i, j, k):
        if (e[j] - e[i]).abs().sum() == 0 or (e[k] - e[i]).abs().sum() == 0:
            return torch.zeros((), dtype=torch.float64)
        a, b = e[j] - e[i], e[k] - e[i]
        return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))

    mu_s, mu_t = mu(s), mu(t)
    distance = sum(
        huber(dist(s, i, j) / mu_s - dist(t, i, j) / mu_t) for i in range(n) for j in range(n)
    ) / (n * n)
    angle = sum(
        huber(cos(s, i, j, k) - cos(t, i, j, k))
        for i in range(n)
        for j in range(n)
        for k in range(n)
    ) / (n**3)
    return distance, angle


def repdistiller_rkd(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A peer's form: Gram-matrix distances clamped at 1e-12, the d > 0 mean, bmm angles."""

    def pdist(e):
        sq = e.pow(2).sum(1)
        res = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12).sqrt().clone()
        res[range(len(e)), range(len(e))] = 0
        return res

    def angles(e):
        d = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
        return torch.bmm(d, d.transpose(1, 2)).view(-1)

    td, sd = pdist(t), pdist(s)
    loss_d = F.smooth_l1_loss(sd / sd[sd > 0].mean(), td / td[td > 0].mean())
    return 25 * loss_d + 50 * F.smooth_l1_loss(angles(s), angles(t))


def test_terms_match_formula_with_different_widths() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 7) * 4
    distance, angle = rkd_terms(s, t)
    want_d, want_a = naive_rkd(s, t)
    assert distance.dtype == angle.dtype == torch.float32
    assert torch.allclose(distance.double(), want_d, rtol=1e-5, atol=1e-8)
    assert torch.allclose(angle.double(), want_a, rtol=1e-5, atol=1e-8)
    got = rkd_loss(s, t)
    assert torch.allclose(got, 25 * distance + 50 * angle)
    assert torch.allclose(got, repdistiller_rkd(s, t), rtol=1e-5)
    assert torch.allclose(rkd_loss(s, t, 2.0, 0.0), 2 * distance)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(1)
    s = torch.randn(4, 3, dtype=torch.float64)
    t = torch.randn(4, 5, dtype=torch.float64)
    s1 = s.clone().float().requires_grad_(True)
    rkd_loss(s1, t.float()).backward()
    s2 = s.clone().requires_grad_(True)
    d, a = naive_rkd(s2, t)
    (25 * d + 50 * a).backward()
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-7)


def test_invariant_to_scale_rotation_and_translation() -> None:
    torch.manual_seed(2)
    t = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    s = 3.0 * t @ q + 1.5  # the same structure
    distance, angle = rkd_terms(s, t)
    assert distance.item() < 1e-9 and angle.item() < 1e-9


def test_feature_maps_are_flattened_and_teacher_gets_no_gradient() -> None:
    torch.manual_seed(3)
    s = torch.randn(4, 2, 3, 3, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    got = rkd_loss(s, t)
    got.backward()
    assert torch.allclose(got, rkd_loss(s.detach().reshape(4, -1), t.detach()))
    assert t.grad is None and s.grad is not None


def test_coincident_embeddings_stay_finite() -> None:
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    distance, angle = rkd_terms(s, t)
    (distance + angle).backward()
    assert torch.isfinite(distance) and torch.isfinite(angle)
    assert s.grad.abs().max() < 100  # no 1 / 1e-12 blow-up from the zero difference
    d_want, a_want = naive_rkd(s.detach(), t)  # the naive cosine of a zero difference is 0
    assert torch.allclose(distance.double(), d_want, rtol=1e-5)
    assert torch.allclose(angle.double(), a_want, rtol=1e-5)


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(4)
    s = torch.randn(5, 6).bfloat16().requires_grad_(True)
    t = torch.randn(5, 9).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance, angle = rkd_terms(s, t)
    assert distance.dtype == angle.dtype == torch.float32
    want_d, want_a = naive_rkd(s.detach().float(), t.float())
    assert torch.allclose(distance.double(), want_d, rtol=1e-4)
    assert torch.allclose(angle.double(), want_a, rtol=1e-4)
    (distance + angle).backward()
    assert s.grad is not None


def test_bad_arguments() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    with pytest.raises(ValueError, match=r"student_emb must be .* N >= 2.*got shape \(1, 3\)"):
        rkd_terms(s[:1], t[:1])
    with pytest.raises(ValueError, match=r"teacher_emb must be .* got shape \(4,\)"):
        rkd_terms(s, torch.randn(4))
    with pytest.raises(ValueError, match="eps must be a finite number greater than 0, got 0"):
        rkd_terms(s, t, eps=0)
    with pytest.raises(ValueError, match="same batch, got 4 and 3 rows"):
        rkd_terms(s, t[:3])
    with pytest.raises(ValueError, match="distance_weight must be a finite .* equal to 0, got -1"):
        rkd_loss(s, t, distance_weight=-1)
    with pytest.raises(ValueError, match="angle_weight must be .* got nan"):
        rkd_loss(s, t, angle_weight=math.nan)
