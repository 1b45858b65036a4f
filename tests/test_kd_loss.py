"""kd_loss against the formula written out independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import kd_loss


def reference_kd(s: torch.Tensor, t: torch.Tensor, T: float, mask=None) -> torch.Tensor:
    """T^2 * sum_c p_t (log p_t - log p_s), averaged over positions, written with loops."""
    s2 = s.reshape(-1, s.shape[-1]).double()
    t2 = t.reshape(-1, t.shape[-1]).double()
    m = None if mask is None else mask.reshape(-1)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(s2.shape[0]):
        if m is not None and not bool(m[i]):
            continue
        ps = torch.exp(s2[i] / T) / torch.exp(s2[i] / T).sum()
        pt = torch.exp(t2[i] / T) / torch.exp(t2[i] / T).sum()
        total = total + sum(pt[c] * (math.log(pt[c]) - torch.log(ps[c])) for c in range(len(pt)))
        count += 1
    return T * T * total / count


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_matches_formula_for_image_logits(T: float) -> None:
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5)
    got = kd_loss(s, t, T)
    want = reference_kd(s, t, T)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    # PyTorch's batchmean KL times T^2 is the same number.
    torch_kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    assert torch.allclose(got, torch_kl * T**2, rtol=1e-5)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_gradient_matches_formula(T: float) -> None:
    torch.manual_seed(1)
    s = torch.randn(4, 7, dtype=torch.float64)
    t = torch.randn(4, 7, dtype=torch.float64)
    s1 = s.clone().float().requires_grad_(True)
    kd_loss(s1, t.float(), T).backward()
    s2 = s.clone().requires_grad_(True)
    reference_kd(s2, t, T).backward()
    # Analytic form: d/ds = T/N * (softmax(s/T) - softmax(t/T)).
    analytic = T / s.shape[0] * (torch.softmax(s / T, 1) - torch.softmax(t / T, 1))
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-7)
    assert torch.allclose(s2.grad, analytic, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_sequence_logits_with_mask(T: float) -> None:
    torch.manual_seed(2)
    s = torch.randn(3, 4, 6, requires_grad=True)
    t = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    got = kd_loss(s, t, T, mask=mask)
    # float32 against float64: at T = 20 the terms are tiny, so allow 1e-4 relative.
    assert torch.allclose(got.double(), reference_kd(s, t, T, mask), rtol=1e-4, atol=1e-7)
    # Masked-out positions have no effect on the value or the gradient.
    s_changed = s.detach().clone()
    s_changed[0, 3] += 100.0
    assert torch.allclose(kd_loss(s_changed, t, T, mask=mask), got, rtol=1e-6)
    got.backward()
    assert torch.all(s.grad[~mask] == 0)
    assert s.grad[mask].abs().sum() > 0


def test_class_dim_other_than_last() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    moved = kd_loss(s.transpose(1, 2), t.transpose(1, 2), 2.0)
    assert torch.allclose(kd_loss(s, t, 2.0, dim=1), moved, rtol=1e-6)


def test_zero_when_student_equals_teacher() -> None:
    x = torch.randn(8, 10)
    assert kd_loss(x, x.clone(), 4.0).abs().item() < 1e-6
    assert kd_loss(x.view(2, 4, 10), x.view(2, 4, 10), 1.0).abs().item() < 1e-6


def test_no_gradient_into_teacher() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, 4.0).backward()
    assert t.grad is None and s.grad is not None


def test_float32_under_bf16_autocast() -> None:
    s = torch.randn(4, 10).bfloat16().requires_grad_(True)
    t = torch.randn(4, 10).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = kd_loss(s, t, 4.0)
    assert loss.dtype == torch.float32
    want = reference_kd(s.detach().float(), t.float(), 4.0)
    assert torch.allclose(loss.double(), want, rtol=1e-5)
    loss.backward()
    assert s.grad is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="mask shape"):
        kd_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), mask=torch.ones(2, 4))
