"""PKT against its formula written out with loops, and against the authors' form."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses.pkt import pkt_loss

EPS = 1e-7


def naive_pkt(s: torch.Tensor, t: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(1/N^2) sum_ij P_t log((P_t + eps) / (P_s + eps)), kernels from explicit loops, float64."""
    s, t = s.double().reshape(len(s), -1), t.double().reshape(len(t), -1)
    n = s.shape[0]

    def probabilities(e):
        norms = [torch.sqrt((e[i] * e[i]).sum()) + eps for i in range(n)]
        k = [
            [((e[i] * e[j]).sum() / (norms[i] * norms[j]) + 1) / 2 for j in range(n)]
            for i in range(n)
        ]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    ps, pt = probabilities(s), probabilities(t)
    total = sum(
        pt[i][j] * torch.log((pt[i][j] + eps) / (ps[i][j] + eps))
        for i in range(n)
        for j in range(n)
    )
    return total / (n * n)


def authors_pkt(output_net: torch.Tensor, target_net: torch.Tensor) -> torch.Tensor:
    """The form of passalis/probabilistic_kt (and RepDistiller's PKT), restated."""
    output_net = output_net / (output_net.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    target_net = target_net / (target_net.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    model = (output_net @ output_net.t() + 1.0) / 2.0
    target = (target_net @ target_net.t() + 1.0) / 2.0
    model = model / model.sum(1, keepdim=True)
    target = target / target.sum(1, keepdim=True)
    return torch.mean(target * torch.log((target + EPS) / (model + EPS)))


def test_matches_formula_and_the_authors_form() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 8) * 3
    got = pkt_loss(s, t)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), naive_pkt(s, t), rtol=1e-5, atol=1e-9)
    assert torch.allclose(got, authors_pkt(s, t), rtol=1e-5)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(1)
    s = torch.randn(4, 3, dtype=torch.float64)
    t = torch.randn(4, 6, dtype=torch.float64)
    s1 = s.clone().float().requires_grad_(True)
    pkt_loss(s1, t.float()).backward()
    s2 = s.clone().requires_grad_(True)
    naive_pkt(s2, t).backward()
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-10)


def test_zero_when_same_directions_and_no_teacher_gradient() -> None:
    torch.manual_seed(2)
    t = torch.randn(6, 4, requires_grad=True)
    s = (t.detach() * (torch.rand(6, 1) * 5 + 0.1)).requires_grad_(True)  # rescaled rows
    loss = pkt_loss(s, t)
    loss.backward()
    assert abs(loss.item()) < 1e-7
    assert t.grad is None and s.grad is not None


def test_zero_embedding_and_feature_maps() -> None:
    torch.manual_seed(3)
    s = torch.randn(3, 2, 2, 2)
    s[1] = 0.0
    s.requires_grad_(True)
    t = torch.randn(3, 5)
    loss = pkt_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert torch.allclose(loss.double(), naive_pkt(s.detach(), t), rtol=1e-5)


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(4)
    s = torch.randn(5, 6).bfloat16().requires_grad_(True)
    t = torch.randn(5, 9).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pkt_loss(s, t)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), naive_pkt(s.detach().float(), t.float()), rtol=1e-4)
    loss.backward()
    assert s.grad is not None


def test_bad_arguments() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 5)
    with pytest.raises(ValueError, match="eps must be a finite number greater than 0, got 0"):
        pkt_loss(s, t, eps=0)
    with pytest.raises(ValueError, match="eps must be .* got nan"):
        pkt_loss(s, t, eps=math.nan)
    with pytest.raises(ValueError, match=r"student_emb must be .*got shape \(4,\)"):
        pkt_loss(torch.randn(4), t)
    with pytest.raises(ValueError, match="same batch, got 4 and 2 rows"):
        pkt_loss(s, t[:2])
