"""DIST against its formula written out with loops, and against numpy's Pearson correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill.losses.dist import dist_loss, dist_terms


def naive_pearson(u: list, v: list, eps: float) -> torch.Tensor:
    n = len(u)
    mu, mv = sum(u) / n, sum(v) / n
    num = sum((u[k] - mu) * (v[k] - mv) for k in range(n))
    nu = torch.sqrt(sum((u[k] - mu) ** 2 for k in range(n)))
    nv = torch.sqrt(sum((v[k] - mv) ** 2 for k in range(n)))
    return num / (nu * nv + eps)


def naive_dist(s: torch.Tensor, t: torch.Tensor, tau: float, eps: float = 1e-8):
    """tau^2 (1 - mean row correlation), tau^2 (1 - mean column correlation); float64 loops."""
    ps = torch.softmax(s.double() / tau, 1)
    pt = torch.softmax(t.double() / tau, 1)
    rows, classes = ps.shape
    inter = sum(
        naive_pearson([ps[i, c] for c in range(classes)], [pt[i, c] for c in range(classes)], eps)
        for i in range(rows)
    )
    intra = sum(
        naive_pearson([ps[i, c] for i in range(rows)], [pt[i, c] for i in range(rows)], eps)
        for c in range(classes)
    )
    return tau**2 * (1 - inter / rows), tau**2 * (1 - intra / classes)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_terms_match_formula(tau: float) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(6, 5) * 2, torch.randn(6, 5) * 2
    inter, intra = dist_terms(s, t, tau)
    want_inter, want_intra = naive_dist(s, t, tau)
    assert inter.dtype == intra.dtype == torch.float32
    assert torch.allclose(inter.double(), want_inter, rtol=1e-5, atol=1e-7)
    assert torch.allclose(intra.double(), want_intra, rtol=1e-5, atol=1e-7)
    got = dist_loss(s, t, beta=2.0, gamma=0.5, temperature=tau)
    assert torch.allclose(got, 2.0 * inter + 0.5 * intra)


def test_matches_numpy_pearson() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(8, 4), torch.randn(8, 4)
    ps = torch.softmax(s, 1).double().numpy()
    pt = torch.softmax(t, 1).double().numpy()
    rows = np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(8)])
    cols = np.mean([np.corrcoef(ps[:, c], pt[:, c])[0, 1] for c in range(4)])
    inter, intra = dist_terms(s, t)
    assert math.isclose(inter.item(), 1 - rows, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(intra.item(), 1 - cols, rel_tol=1e-5, abs_tol=1e-6)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(2)
    s = torch.randn(5, 4, dtype=torch.float64) * 2
    t = torch.randn(5, 4, dtype=torch.float64) * 2
    s1 = s.clone().float().requires_grad_(True)
    dist_loss(s1, t.float(), beta=1.0, gamma=3.0, temperature=2.0).backward()
    s2 = s.clone().requires_grad_(True)
    inter, intra = naive_dist(s2, t, 2.0)
    (inter + 3.0 * intra).backward()
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-8)


def test_constant_rows_and_columns_are_safe() -> None:
    # Row 0 of the student is uniform (constant probabilities); all rows equal -> constant
    # columns for the intra-class term.
    s = torch.zeros(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    inter, intra = dist_terms(s, t)
    (inter + intra).backward()
    assert torch.isfinite(inter) and torch.isfinite(intra) and torch.isfinite(s.grad).all()
    assert math.isclose(inter.item(), 1.0, abs_tol=1e-6)  # correlation 0 with a constant
    assert math.isclose(intra.item(), 1.0, abs_tol=1e-6)
    one = torch.randn(1, 4, requires_grad=True)  # a batch of one: intra is 1, no gradient
    inter1, intra1 = dist_terms(one, torch.randn(1, 4))
    assert math.isclose(intra1.item(), 1.0, abs_tol=1e-6)
    intra1.backward()
    assert torch.all(one.grad == 0)


def test_sequence_logits_with_mask_and_class_dim() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    inter, intra = dist_terms(s, t, 2.0, mask=mask)
    want_inter, want_intra = naive_dist(s[mask], t[mask], 2.0)
    assert torch.allclose(inter.double(), want_inter, rtol=1e-5)
    assert torch.allclose(intra.double(), want_intra, rtol=1e-5)
    moved = dist_terms(s.transpose(1, 2), t.transpose(1, 2), 2.0, dim=1, mask=mask)
    assert torch.allclose(moved[0], inter) and torch.allclose(moved[1], intra)
    none = dist_terms(s, t, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert none[0].item() == 0.0 and none[1].item() == 0.0


def test_no_gradient_into_teacher_and_zero_when_equal() -> None:
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    dist_loss(s, t).backward()
    assert t.grad is None and s.grad is not None
    x = torch.randn(4, 6) * 3
    inter, intra = dist_terms(x, x.clone())
    assert abs(inter.item()) < 1e-5 and abs(intra.item()) < 1e-5


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(4)
    s = torch.randn(4, 10).bfloat16().requires_grad_(True)
    t = torch.randn(4, 10).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inter, intra = dist_terms(s, t, 4.0)
    assert inter.dtype == intra.dtype == torch.float32
    want_inter, want_intra = naive_dist(s.detach().float(), t.float(), 4.0)
    assert torch.allclose(inter.double(), want_inter, rtol=1e-4)
    assert torch.allclose(intra.double(), want_intra, rtol=1e-4)
    (inter + intra).backward()
    assert s.grad is not None


def test_bad_arguments() -> None:
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature must be a finite .* than 0, got -1"):
        dist_terms(s, t, -1)
    with pytest.raises(ValueError, match="eps must be a finite number greater than 0, got 0"):
        dist_terms(s, t, eps=0)
    with pytest.raises(ValueError, match="beta must be a finite .* equal to 0, got -0.5"):
        dist_loss(s, t, beta=-0.5)
    with pytest.raises(ValueError, match="gamma must be .* got nan"):
        dist_loss(s, t, gamma=math.nan)
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(3, 3\)"):
        dist_terms(s, torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"mask shape \(3,\) must equal .* \(2,\)"):
        dist_terms(s, t, mask=torch.ones(3, dtype=torch.bool))
