"""Attention transfer against the formula written out with loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill.losses.at import at_loss, at_terms, attention_map


def naive_map(a: torch.Tensor, p: float) -> torch.Tensor:
    """Q[n, i] = mean_c |A[n, c, i]|^p, then each row divided by its L2 norm (loops, float64)."""
    n_items, channels, height, width = a.shape
    a = a.double()
    rows = []
    for n in range(n_items):
        q = torch.zeros(height * width, dtype=torch.float64)
        for i in range(height * width):
            y, x = divmod(i, width)
            q[i] = sum(a[n, c, y, x].abs() ** p for c in range(channels)) / channels
        rows.append(q / torch.sqrt((q * q).sum()))
    return torch.stack(rows)


def block_mean(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average pooling over equal blocks (the sizes divide evenly in these tests)."""
    n_items, channels, height, width = a.shape
    bh, bw = height // size[0], width // size[1]
    out = torch.zeros(n_items, channels, *size, dtype=a.dtype)
    for y in range(size[0]):
        for x in range(size[1]):
            out[:, :, y, x] = a[:, :, y * bh : (y + 1) * bh, x * bw : (x + 1) * bw].mean(dim=(2, 3))
    return out


def naive_at(student: list[torch.Tensor], teacher: list[torch.Tensor], p: float) -> torch.Tensor:
    """Sum over pairs of the mean over batch and positions of (q_s - q_t)^2."""
    total = torch.zeros((), dtype=torch.float64)
    for s, t in zip(student, teacher, strict=True):
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        if tuple(s.shape[2:]) != size:
            s = block_mean(s, size)
        if tuple(t.shape[2:]) != size:
            t = block_mean(t, size)
        diff = naive_map(s, p) - naive_map(t, p)
        n_items, positions = diff.shape
        total = total + sum(diff[n, i] ** 2 for n in range(n_items) for i in range(positions)) / (
            n_items * positions
        )
    return total


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_map_matches_loops(p: float) -> None:
    torch.manual_seed(0)
    a = torch.randn(2, 3, 3, 4)  # negative values: |a|^p, also for odd p
    got = attention_map(a, p)
    assert got.shape == (2, 12) and got.dtype == torch.float32
    assert torch.allclose(got.double(), naive_map(a, p), rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.norm(dim=1), torch.ones(2), atol=1e-6)


def test_loss_matches_formula_with_different_channels() -> None:
    torch.manual_seed(1)
    student = [torch.randn(3, 2, 4, 4), torch.randn(3, 4, 2, 2)]
    teacher = [torch.randn(3, 5, 4, 4), torch.randn(3, 8, 2, 2)]
    got = at_loss(student, teacher)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), naive_at(student, teacher, 2.0), rtol=1e-5)
    terms = at_terms(student, teacher)
    assert len(terms) == 2
    assert torch.allclose(sum(terms), got)
    # A peer's form (RepDistiller/mdistiller): normalize(f.pow(2).mean(1).view(N, -1)).
    peer = sum(
        (F.normalize(s.pow(2).mean(1).view(3, -1)) - F.normalize(t.pow(2).mean(1).view(3, -1)))
        .pow(2)
        .mean()
        for s, t in zip(student, teacher, strict=True)
    )
    assert torch.allclose(got, peer, rtol=1e-5)


@pytest.mark.parametrize("student_larger", [True, False])
def test_larger_map_is_average_pooled(student_larger: bool) -> None:
    torch.manual_seed(2)
    big, small = torch.randn(2, 3, 8, 4), torch.randn(2, 5, 4, 2)
    student, teacher = (big, small) if student_larger else (small, big)
    got = at_loss([student], [teacher])
    assert torch.allclose(got.double(), naive_at([student], [teacher], 2.0), rtol=1e-5)


def test_gradient_matches_formula() -> None:
    torch.manual_seed(3)
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.randn(2, 6, 2, 2, dtype=torch.float64)
    s1 = s.clone().float().requires_grad_(True)
    at_loss([s1], [t.float()]).backward()
    s2 = s.clone().requires_grad_(True)
    naive_at([s2], [t], 2.0).backward()
    assert torch.allclose(s1.grad.double(), s2.grad, rtol=1e-4, atol=1e-9)


def test_no_gradient_into_teacher_and_zero_when_equal() -> None:
    torch.manual_seed(4)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    at_loss(s, t).backward()
    assert t.grad is None and s.grad is not None
    x = torch.randn(2, 3, 4, 4)
    assert at_loss(x, 2 * x.clone()).item() < 1e-12  # scale-free: the maps are normalised


def test_all_zero_map_gives_no_nan() -> None:
    s = torch.zeros(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4)
    loss = at_loss(s, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # q_s = 0, so each row contributes |q_t|^2 = 1 over 16 positions.
    assert torch.allclose(loss, torch.tensor(1.0 / 16), rtol=1e-6)


def test_float32_under_bf16_autocast() -> None:
    torch.manual_seed(5)
    s = torch.randn(2, 3, 4, 4).bfloat16().requires_grad_(True)
    t = torch.randn(2, 5, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = at_loss([s], [t])
        q = attention_map(s)
    assert loss.dtype == torch.float32 and q.dtype == torch.float32
    want = naive_at([s.detach().float()], [t.float()], 2.0)
    assert torch.allclose(loss.double(), want, rtol=1e-5)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()


def test_bad_arguments() -> None:
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"p must be a finite number greater than 0, got 0"):
        attention_map(x, 0)
    with pytest.raises(ValueError, match=r"p must be .* got -1"):
        at_loss(x, x, p=-1)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\].*\(2, 12\)"):
        attention_map(torch.randn(2, 12))
    with pytest.raises(ValueError, match=r"pair 0: .*\[N, C, H, W\]"):
        at_loss([torch.randn(2, 3, 4)], [x])
    with pytest.raises(ValueError, match="same \\(non-zero\\) number.*got 2 and 1"):
        at_loss([x, x], [x])
    with pytest.raises(ValueError, match="same \\(non-zero\\) number.*got 0 and 0"):
        at_loss([], [])
    with pytest.raises(ValueError, match="pair 1: .*batch sizes 2 and 3"):
        at_loss([x, x], [x, torch.randn(3, 3, 4, 4)])
