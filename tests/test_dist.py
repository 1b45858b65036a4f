"""The DIST method: its loss against the formula, logit standardisation, the teacher rules,
and a recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill
from distill.errors import ConfigError
from distill.methods import DIST, METHODS
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def make_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Linear(6, 5))
    return teacher, student


def grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation of two vectors, as the authors compute it (eps 1e-8 on the norms)."""
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


def z_score(z: torch.Tensor) -> torch.Tensor:
    mean = z.mean(dim=1, keepdim=True)
    std = ((z - mean) ** 2).sum(dim=1, keepdim=True).div(z.shape[1] - 1).sqrt()
    return (z - mean) / (std + 1e-7)


@pytest.mark.parametrize("standardize", [False, True])
def test_loss_is_ce_plus_weighted_relations(standardize: bool) -> None:
    teacher, student = make_pair()
    tau, beta, gamma = 3.0, 2.0, 0.5
    method = DIST(teacher, student, beta, gamma, tau, standardize=standardize)
    x, y = torch.randn(7, 6), torch.randint(0, 5, (7,))
    out = method(x, y)
    got = grads(student, out.loss)

    with torch.no_grad():
        t = teacher.eval()(x)
    s = student(x)
    ce = F.cross_entropy(s, y)
    s_in, t_in = (z_score(s), z_score(t)) if standardize else (s, t)
    p_s, p_t = torch.softmax(s_in / tau, dim=1), torch.softmax(t_in / tau, dim=1)
    rows = torch.stack([pearson(p_s[i], p_t[i]) for i in range(7)])  # over classes
    cols = torch.stack([pearson(p_s[:, c], p_t[:, c]) for c in range(5)])  # over samples
    inter, intra = tau**2 * (1 - rows.mean()), tau**2 * (1 - cols.mean())
    want = ce + beta * inter + gamma * intra
    assert torch.allclose(out.parts["ce"], ce)
    assert torch.allclose(out.parts["inter"], beta * inter, atol=1e-6)
    assert torch.allclose(out.parts["intra"], gamma * intra, atol=1e-6)
    assert torch.allclose(out.loss, want, atol=1e-6)
    for g, w in zip(got, grads(student, want), strict=True):
        assert torch.allclose(g, w, atol=1e-5)
    assert distill.DIST is DIST


def test_defaults_are_the_cifar_setting() -> None:
    teacher, student = make_pair()
    method = DIST(teacher, student)
    assert (method.beta, method.gamma, method.temperature, method.standardize) == (
        2.0,
        2.0,
        4.0,
        False,
    )
    spec = METHODS["dist"].model_validate({"method": "dist", "teacher": "t", "student": "s"})
    assert (spec.beta, spec.gamma, spec.temperature) == (2.0, 2.0, 4.0)


def test_teacher_frozen_and_only_student_trains() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = DIST(teacher, student).train()
    params = list(method.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        out = method(torch.randn(8, 6), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"beta": -1.0}, "beta"), ({"gamma": float("inf")}, "gamma"), ({"temperature": 0}, "temp")],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    teacher, student = make_pair()
    with pytest.raises(ConfigError, match=match):
        DIST(teacher, student, **kwargs)


def test_recipe_run(tmp_path: Path) -> None:
    recipe = {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {"teacher": {"arch": "cnn-4"}, "student_dist": {"arch": "cnn-2"}},
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {"method": "train", "model": "teacher", "epochs": 1},
            {"method": "dist", "teacher": "teacher", "student": "student_dist",
             "beta": 1.0, "gamma": 1.0, "temperature": 1.0, "cache": "teacher"},
        ],
    }
    summary = Pipeline(parse_recipe(recipe), tmp_path / "run", progress=False).run()
    assert summary["stages"][1]["temperature"] == 1.0
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    dist = [x for x in lines if x["stage"] == "student_dist"]
    assert len(dist) == 2 and {"ce", "inter", "intra"} <= set(dist[-1]["train"])
    assert 0.0 <= summary["models"]["student_dist"]["val_accuracy"] <= 1.0
