"""Logit standardisation against its formula written out with loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.errors import ConfigError
from distill.losses.kd import kd_loss
from distill.losses.standardize import standardize
from distill.methods import METHODS, StageContext
from distill.tasks import get_task


def naive_standardize(z: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(z - mean) / (sample std + eps) per row, with explicit sums, float64."""
    z = z.double()
    rows = []
    for row in z:
        k = len(row)
        mean = sum(row[c] for c in range(k)) / k
        std = torch.sqrt(sum((row[c] - mean) ** 2 for c in range(k)) / (k - 1))
        rows.append(torch.stack([(row[c] - mean) / (std + eps) for c in range(k)]))
    return torch.stack(rows)


def test_matches_formula() -> None:
    torch.manual_seed(0)
    z = torch.randn(4, 7) * 5 + 3
    got = standardize(z)
    assert got.dtype == torch.float32 and got.shape == z.shape
    assert torch.allclose(got.double(), naive_standardize(z), rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.mean(dim=1), torch.zeros(4), atol=1e-6)
    assert torch.allclose(got.std(dim=1), torch.ones(4), atol=1e-5)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(1)
    z = torch.randn(3, 5, dtype=torch.float64)
    weights = torch.randn(3, 5, dtype=torch.float64)
    z1 = z.clone().float().requires_grad_(True)
    (standardize(z1) * weights.float()).sum().backward()
    z2 = z.clone().requires_grad_(True)
    (naive_standardize(z2) * weights).sum().backward()
    assert torch.allclose(z1.grad.double(), z2.grad, rtol=1e-4, atol=1e-6)


def test_invariant_to_shift_and_scale() -> None:
    torch.manual_seed(2)
    z = torch.randn(3, 10)
    assert torch.allclose(standardize(4.0 * z - 7.0), standardize(z), atol=1e-5)
    assert torch.allclose(standardize(standardize(z)), standardize(z), atol=1e-5)


def test_class_dim_and_sequence_logits() -> None:
    torch.manual_seed(3)
    z = torch.randn(2, 3, 6)
    got = standardize(z)
    want = naive_standardize(z.reshape(6, 6)).reshape(2, 3, 6)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(standardize(z.transpose(1, 2), dim=1), got.transpose(1, 2))


def test_constant_row_gives_zeros() -> None:
    z = torch.full((2, 4), 3.0, requires_grad=True)
    got = standardize(z)
    (got * torch.randn(2, 4)).sum().backward()
    assert torch.all(got == 0) and torch.isfinite(z.grad).all()


def test_kd_on_standardised_logits_is_the_authors_form() -> None:
    """KD with the Z-score: T^2 KL(softmax(Z(t)/T) || softmax(Z(s)/T)), one base T for both."""
    torch.manual_seed(4)
    s, t, T = torch.randn(4, 10) * 2, torch.randn(4, 10) * 8, 2.0

    def z_score(x):  # the authors' normalize(): x.std() default, 1e-7 on the std
        return (x - x.mean(dim=-1, keepdim=True)) / (1e-7 + x.std(dim=-1, keepdim=True))

    want = (
        F.kl_div(
            F.log_softmax(z_score(s) / T, dim=1), F.softmax(z_score(t) / T, dim=1), reduction="none"
        )
        .sum(1)
        .mean()
        * T**2
    )
    assert torch.allclose(kd_loss(standardize(s), standardize(t), T), want, rtol=1e-5)


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(5)
    z = torch.randn(3, 8).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = standardize(z)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), naive_standardize(z.detach().float()), atol=1e-5)
    got.sum().backward()
    assert z.grad is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"at least 2 classes along dim -1 .* shape \(3, 1\)"):
        standardize(torch.randn(3, 1))
    with pytest.raises(ValueError, match=r"at least 2 classes .* shape \(\)"):
        standardize(torch.tensor(1.0))
    with pytest.raises(ValueError, match="eps must be a finite .* equal to 0, got -1"):
        standardize(torch.randn(2, 3), eps=-1)
    with pytest.raises(ValueError, match="eps must be .* got nan"):
        standardize(torch.randn(2, 3), eps=math.nan)


@pytest.mark.parametrize("method", ["kd", "dkd", "dist"])
def test_standardize_refuses_a_topk_cache(method: str) -> None:
    """A top-k cache keeps only T·log p of the k largest logits, whose Z-score differs from
    the logits': every method that standardises refuses the pair."""
    spec = METHODS[method].model_validate(
        {"method": method, "teacher": "t", "student": "s", "standardize": True,
         "cache": "teacher", "cache_topk": 3}
    )
    ctx = StageContext(models={}, sample_batch={}, task=get_task("classification"))
    with pytest.raises(ConfigError, match="cache_topk"):
        spec.check(ctx)
