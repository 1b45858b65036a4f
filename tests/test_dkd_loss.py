"""DKD against its formula written out with loops, KD's decomposition and mdistiller's form."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.dkd import dkd_loss, dkd_terms
from distill.losses.kd import kd_loss


def naive_dkd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float):
    """TCKD and NCKD (times T^2, batch mean) from explicit probabilities, float64 loops."""
    tckd = torch.zeros((), dtype=torch.float64)
    nckd = torch.zeros((), dtype=torch.float64)
    n_items, classes = s.shape
    for i in range(n_items):
        ps = torch.exp(s[i].double() / T) / torch.exp(s[i].double() / T).sum()
        pt = torch.exp(t[i].double() / T) / torch.exp(t[i].double() / T).sum()
        target = int(y[i])
        bs = [ps[target], 1 - ps[target]]
        bt = [pt[target], 1 - pt[target]]
        tckd = tckd + sum(bt[k] * (torch.log(bt[k]) - torch.log(bs[k])) for k in range(2))
        for c in range(classes):
            if c == target:
                continue
            hat_s = ps[c] / (1 - ps[target])
            hat_t = pt[c] / (1 - pt[target])
            nckd = nckd + hat_t * (torch.log(hat_t) - torch.log(hat_s))
    return T * T * tckd / n_items, T * T * nckd / n_items


def mdistiller_dkd(s, t, y, alpha, beta, T):
    """A peer's form: cat_mask of summed probabilities, and -1000 on the target logit."""
    gt = F.one_hot(y, s.shape[1]).bool()
    ps, pt = F.softmax(s / T, 1), F.softmax(t / T, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * T**2 / s.shape[0]
    nckd = (
        F.kl_div(
            F.log_softmax(s / T - 1000.0 * gt, 1),
            F.softmax(t / T - 1000.0 * gt, 1),
            reduction="sum",
        )
        * T**2
        / s.shape[0]
    )
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_terms_match_formula(T: float) -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 6) * 3, torch.randn(5, 6) * 3
    y = torch.tensor([0, 5, 2, 2, 3])
    tckd, nckd = dkd_terms(s, t, y, T)
    want_t, want_n = naive_dkd(s, t, y, T)
    assert tckd.dtype == nckd.dtype == torch.float32
    assert torch.allclose(tckd.double(), want_t, rtol=1e-4, atol=1e-7)
    assert torch.allclose(nckd.double(), want_n, rtol=1e-4, atol=1e-7)
    got = dkd_loss(s, t, y, alpha=0.5, beta=3.0, temperature=T)
    assert torch.allclose(got, 0.5 * tckd + 3.0 * nckd)
    assert torch.allclose(got, mdistiller_dkd(s, t, y, 0.5, 3.0, T), rtol=1e-5)


def test_kd_is_tckd_plus_weighted_nckd() -> None:
    """The paper's decomposition, per sample: KD = TCKD + (1 - p^t_y) NCKD."""
    torch.manual_seed(1)
    s, t = torch.randn(4, 7) * 2, torch.randn(4, 7) * 2
    y = torch.tensor([1, 6, 0, 3])
    for i in range(4):
        tckd, nckd = dkd_terms(s[i : i + 1], t[i : i + 1], y[i : i + 1], 4.0)
        p_target = torch.softmax(t[i] / 4.0, 0)[y[i]]
        kd = kd_loss(s[i : i + 1], t[i : i + 1], 4.0)
        assert torch.allclose(tckd + (1 - p_target) * nckd, kd, rtol=1e-5, atol=1e-7)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(2)
    s = torch.randn(4, 5, dtype=torch.float64) * 2
    t = torch.randn(4, 5, dtype=torch.float64) * 2
    y = torch.tensor([4, 0, 2, 2])
    s1 = s.clone().float().requires_grad_(True)
    dkd_loss(s1, t.float(), y, alpha=1.0, beta=8.0, temperature=4.0).backward()
    s2 = s.clone().requires_grad_(True)
    tckd, nckd = naive_dkd(s2, t, y, 4.0)
    (tckd + 8.0 * nckd).backward()
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-7)


def test_extreme_logits_stay_finite() -> None:
    # A saturated student (1 - p_y underflows to 0 in float32) and a saturated teacher.
    s = torch.tensor([[800.0, -800.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0], [-4.0e4, 4.0e4, 0.0]])
    y = torch.tensor([0, 1])
    tckd, nckd = dkd_terms(s, t, y, 4.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()
    # The peer's form is not finite here (log of an underflowed 1 - p_y).
    assert not torch.isfinite(mdistiller_dkd(s.detach(), t, y, 1.0, 8.0, 4.0))
    # Sample 0's non-target classes still compare correctly despite the huge target logit.
    _, nckd0 = dkd_terms(s[:1].detach(), t[:1], y[:1], 4.0)
    want = 16 * F.kl_div(
        F.log_softmax(s[0, 1:].detach() / 4, 0), F.softmax(t[0, 1:] / 4, 0), reduction="sum"
    )
    assert torch.allclose(nckd0, want, rtol=1e-5)


def test_sequence_logits_with_mask_and_class_dim() -> None:
    torch.manual_seed(3)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    y = torch.tensor([[1, 4, -100], [0, -100, -100]])
    mask = y != -100
    tckd, nckd = dkd_terms(s, t, y, 2.0, mask=mask)
    want_t, want_n = naive_dkd(s[mask], t[mask], y[mask], 2.0)
    assert torch.allclose(tckd.double(), want_t, rtol=1e-5)
    assert torch.allclose(nckd.double(), want_n, rtol=1e-5)
    moved = dkd_terms(s.transpose(1, 2), t.transpose(1, 2), y, 2.0, dim=1, mask=mask)
    assert torch.allclose(moved[0], tckd) and torch.allclose(moved[1], nckd)


def test_no_gradient_into_teacher_and_zero_when_equal() -> None:
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    dkd_loss(s, t, y).backward()
    assert t.grad is None and s.grad is not None
    x = torch.randn(4, 6)
    tckd, nckd = dkd_terms(x, x.clone(), y)
    assert abs(tckd.item()) < 1e-6 and abs(nckd.item()) < 1e-6


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(4)
    s = torch.randn(4, 10).bfloat16().requires_grad_(True)
    t = torch.randn(4, 10).bfloat16()
    y = torch.tensor([9, 0, 3, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tckd, nckd = dkd_terms(s, t, y, 4.0)
    assert tckd.dtype == nckd.dtype == torch.float32
    want_t, want_n = naive_dkd(s.detach().float(), t.float(), y, 4.0)
    assert torch.allclose(tckd.double(), want_t, rtol=1e-4)
    assert torch.allclose(nckd.double(), want_n, rtol=1e-4)
    (tckd + nckd).backward()
    assert s.grad is not None


def test_bad_arguments() -> None:
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 2])
    with pytest.raises(ValueError, match="temperature must be a finite .* than 0, got 0"):
        dkd_terms(s, t, y, 0)
    with pytest.raises(ValueError, match="temperature .* got nan"):
        dkd_loss(s, t, y, temperature=math.nan)
    with pytest.raises(ValueError, match="alpha must be a finite .* equal to 0, got -1"):
        dkd_loss(s, t, y, alpha=-1)
    with pytest.raises(ValueError, match="beta must be .* got inf"):
        dkd_loss(s, t, y, beta=math.inf)
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(2, 4\)"):
        dkd_terms(s, torch.randn(2, 4), y)
    with pytest.raises(ValueError, match=r"targets must have .* \[2\]; got \[2, 1\]"):
        dkd_terms(s, t, y[:, None])
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\] .* got 3"):
        dkd_terms(s, t, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="integer tensor.*float32"):
        dkd_terms(s, t, y.float())
    with pytest.raises(ValueError, match="at least 2 classes .* got 1"):
        dkd_terms(s[:, :1], t[:, :1], torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="mask shape"):
        dkd_terms(s, t, y, mask=torch.ones(3, dtype=torch.bool))
