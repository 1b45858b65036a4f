"""mutual_loss against the DML formula written out, gradients, reductions and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses import mutual_loss, mutual_terms


def by_formula(logits: list[torch.Tensor], y: torch.Tensor, t: float) -> list[float]:
    """L_k = CE(z_k, y) + 1/(K-1) Σ_{l≠k} T²·KL(p_l ‖ p_k), KL summed over classes and averaged
    over the batch, computed element by element with plain Python arithmetic."""
    k_total = len(logits)
    n, c = logits[0].shape
    probs = [[[0.0] * c for _ in range(n)] for _ in logits]
    for m, z in enumerate(logits):
        for i in range(n):
            row = [float(v) / t for v in z[i]]
            top = max(row)
            total = sum(math.exp(v - top) for v in row)
            probs[m][i] = [math.exp(v - top) / total for v in row]
    losses = []
    for k, z in enumerate(logits):
        ce = 0.0
        for i in range(n):
            row = [float(v) for v in z[i]]
            top = max(row)
            log_sum = top + math.log(sum(math.exp(v - top) for v in row))
            ce += log_sum - row[int(y[i])]
        ce /= n
        kl = 0.0
        for m in range(k_total):
            if m == k:
                continue
            for i in range(n):
                kl += sum(
                    p * (math.log(p) - math.log(q))
                    for p, q in zip(probs[m][i], probs[k][i], strict=True)
                )
        kl = t * t * kl / n / (k_total - 1)
        losses.append(ce + kl)
    return losses


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_matches_formula(k: int, temperature: float) -> None:
    torch.manual_seed(k)
    logits = [torch.randn(5, 4) * 2 for _ in range(k)]
    y = torch.randint(0, 4, (5,))
    got = mutual_loss(logits, y, temperature)
    want = by_formula(logits, y, temperature)
    assert len(got) == k
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.dim() == 0
        assert float(g) == pytest.approx(w, rel=1e-5)


def test_kl_is_a_batch_mean_not_an_element_mean() -> None:
    # The DML pitfall: an element mean would divide the mutual term by the number of classes.
    torch.manual_seed(0)
    a, b = torch.randn(8, 100), torch.randn(8, 100)
    y = torch.zeros(8, dtype=torch.long)
    ce, kl = mutual_terms([a, b], y)
    want = F.kl_div(F.log_softmax(a, -1), F.softmax(b, -1), reduction="batchmean")
    assert float(kl[0]) == pytest.approx(float(want), rel=1e-5)
    assert float(ce[0]) == pytest.approx(float(F.cross_entropy(a, y)), rel=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_gradient_of_each_loss_reaches_only_its_model(k: int) -> None:
    torch.manual_seed(1)
    logits = [torch.randn(6, 5, requires_grad=True) for _ in range(k)]
    y = torch.randint(0, 5, (6,))
    losses = mutual_loss(logits, y, temperature=2.0)
    for index, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, logits, retain_graph=True, allow_unused=True)
        for other, grad in enumerate(grads):
            if other == index:
                assert grad is not None and grad.abs().sum() > 0
            else:
                assert grad is None or torch.count_nonzero(grad) == 0


def test_summed_losses_give_each_model_its_own_gradient() -> None:
    torch.manual_seed(2)
    logits = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    y = torch.randint(0, 3, (4,))
    torch.stack(mutual_loss(logits, y)).sum().backward()
    for index, z in enumerate(logits):
        fresh = [w.detach().clone().requires_grad_(True) for w in logits]
        mutual_loss(fresh, y)[index].backward()
        assert torch.allclose(z.grad, fresh[index].grad)


def test_fixed_members_count_in_k_and_get_no_loss() -> None:
    torch.manual_seed(3)
    learners = [torch.randn(5, 4, requires_grad=True) for _ in range(2)]
    teacher = torch.randn(5, 4, requires_grad=True)
    y = torch.randint(0, 4, (5,))
    got = mutual_loss(learners, y, 2.0, fixed=[teacher])
    want = mutual_loss([*learners, teacher], y, 2.0)[:2]
    assert len(got) == 2
    for g, w in zip(got, want, strict=True):
        assert float(g.detach()) == pytest.approx(float(w.detach()), rel=1e-6)
    torch.stack(got).sum().backward()
    assert teacher.grad is None


def test_sequence_logits_with_mask() -> None:
    torch.manual_seed(4)
    a, b = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    y = torch.randint(0, 7, (2, 3))
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = mutual_loss([a, b], y, 2.0, mask=mask)
    flat = mutual_loss([a[mask], b[mask]], y[mask], 2.0)
    for g, w in zip(got, flat, strict=True):
        assert float(g) == pytest.approx(float(w), rel=1e-6)
    # Classes along dim 1 instead of last.
    moved = mutual_loss([a.transpose(1, 2), b.transpose(1, 2)], y, 2.0, dim=1, mask=mask)
    for g, w in zip(moved, got, strict=True):
        assert float(g) == pytest.approx(float(w), rel=1e-6)


def test_float32_under_autocast() -> None:
    a, b = torch.randn(4, 3).bfloat16(), torch.randn(4, 3).bfloat16()
    y = torch.randint(0, 3, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = mutual_loss([a, b], y)
    assert all(loss.dtype == torch.float32 for loss in losses)


def test_errors() -> None:
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="at least 2 members"):
        mutual_loss([torch.randn(4, 3)], y)
    with pytest.raises(ValueError, match="same shape"):
        mutual_loss([torch.randn(4, 3), torch.randn(4, 5)], y)
    with pytest.raises(ValueError, match="temperature"):
        mutual_loss([torch.randn(4, 3), torch.randn(4, 3)], y, temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        mutual_loss([torch.randn(4, 3), torch.randn(4, 3)], torch.zeros(5, dtype=torch.long))
