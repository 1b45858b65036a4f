"""The PKT method: its loss against the formula on penultimate features, the teacher rules,
layer names, and a recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _nets import grads, make_pair

import distill
from distill.errors import ConfigError
from distill.methods import PKT
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def naive_pkt(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The authors' divergence with loops: cosine kernel (1 + cos) / 2 over every pair (the
    diagonal too), rows normalised, element mean of p_t log((p_t + eps) / (p_s + eps))."""
    n = s.shape[0]

    def conditional(e: torch.Tensor) -> list[list[torch.Tensor]]:
        unit = [e[i] / (e[i].norm() + eps) for i in range(n)]
        kernel = [[(unit[i] @ unit[j] + 1) / 2 for j in range(n)] for i in range(n)]
        return [[k / sum(row) for k in row] for row in kernel]

    p_s, p_t = conditional(s), conditional(t)
    terms = [
        p_t[i][j] * torch.log((p_t[i][j] + eps) / (p_s[i][j] + eps))
        for i in range(n)
        for j in range(n)
    ]
    return torch.stack(terms).sum() / n**2


def test_loss_is_ce_plus_weighted_divergence() -> None:
    teacher, student = make_pair()
    method = PKT(teacher, student, weight=500.0)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    out = method(x, y)
    got = grads(student, out.loss)

    with torch.no_grad():
        e_t = teacher.body(x)
    e_s = student.body(x)
    ce = F.cross_entropy(student.head.fc(e_s), y)
    want = ce + 500.0 * naive_pkt(e_s, e_t)
    assert torch.allclose(out.parts["ce"], ce)
    assert torch.allclose(out.parts["pkt"], want - ce, rtol=1e-4, atol=1e-6)
    assert torch.allclose(out.loss, want, rtol=1e-4)
    for g, w in zip(got, grads(student, want), strict=True):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-5)
    assert distill.PKT is PKT
    assert PKT(teacher, student).weight == 30000.0


def test_teacher_frozen_and_only_student_trains() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = PKT(teacher, student).train()
    params = list(method.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(params, lr=1e-3)
    for _ in range(2):
        out = method(torch.randn(8, 6), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_input() -> None:
    teacher, student = make_pair()
    with pytest.raises(ConfigError, match=r"teacher_layer: .*'bdy'.*'body'"):
        PKT(teacher, student, teacher_layer="bdy")
    with pytest.raises(ConfigError, match="weight"):
        PKT(teacher, student, weight=-2.0)
    # A layer whose output has no batch dimension cannot give embeddings.
    with pytest.raises(ConfigError, match=r"student_layer: 'body.0' gives shape \[4\]"):
        PKT(teacher, student, student_layer="body.0", sample_batch=torch.randn(6))


def test_recipe_run(tmp_path: Path) -> None:
    recipe = {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {"teacher": {"arch": "cnn-4"}, "student_pkt": {"arch": "cnn-2"}},
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {"method": "train", "model": "teacher", "epochs": 1},
            {"method": "pkt", "teacher": "teacher", "student": "student_pkt"},
        ],
    }
    summary = Pipeline(parse_recipe(recipe), tmp_path / "run", progress=False).run()
    assert summary["stages"][1]["weight"] == 30000.0
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    pkt = [x for x in lines if x["stage"] == "student_pkt"]
    assert len(pkt) == 2 and {"ce", "pkt"} <= set(pkt[-1]["train"])
    assert 0.0 <= summary["models"]["student_pkt"]["val_accuracy"] <= 1.0
