"""The KD Distiller: loss composition and the teacher rules of DESIGN.md."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill
from distill.losses import kd_loss
from distill.methods import KD


def make_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )
    student = nn.Sequential(nn.Linear(6, 3))
    return teacher, student


def test_loss_is_weighted_sum_of_ce_and_kd() -> None:
    teacher, student = make_pair()
    method = KD(teacher, student, temperature=3.0, alpha=0.7)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    out = method(x, y)
    with torch.no_grad():
        t = teacher(x)
    s = student(x)
    want_ce = 0.3 * F.cross_entropy(s, y)
    want_kd = 0.7 * kd_loss(s, t, 3.0)
    assert torch.allclose(out.parts["ce"], want_ce)
    assert torch.allclose(out.parts["kd"], want_kd)
    assert torch.allclose(out.loss, want_ce + want_kd)
    assert out.logits.shape == (5, 3)
    assert distill.KD is KD


def test_teacher_frozen_in_eval_and_never_gets_gradients() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = KD(teacher, student)
    method.train()
    assert not teacher.training and student.training
    params = list(method.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        out = method(torch.randn(8, 6), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    # eval mode: BatchNorm running stats unchanged, dropout inactive.
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert "teacher.0.weight" not in method.trainable_state_dict()


def test_teacher_output_has_no_graph() -> None:
    teacher, student = make_pair()
    method = KD(teacher, student)
    assert not method.teacher({"inputs": torch.randn(2, 6)}).requires_grad


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha")],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    teacher, student = make_pair()
    with pytest.raises(ValueError, match=match):
        KD(teacher, student, **kwargs)


def test_student_cannot_teach_itself() -> None:
    _, student = make_pair()
    with pytest.raises(ValueError, match="teach itself"):
        KD(student, student)


def test_huggingface_style_outputs() -> None:
    class WithLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):  # noqa: ANN001, ANN202
            return {"logits": self.fc(x), "hidden": x}

    method = KD(WithLogits(), WithLogits())
    out = method(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
