"""The RKD method: its loss against the formula on penultimate features, the teacher rules,
layer names, and a recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _nets import grads, make_pair
from torch import nn

import distill
from distill.errors import ConfigError
from distill.losses.rkd import rkd_terms
from distill.methods import RKD
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def test_loss_is_ce_plus_weighted_distance_and_angle() -> None:
    teacher, student = make_pair()
    method = RKD(teacher, student, distance_weight=3.0, angle_weight=7.0)
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    out = method(x, y)
    got = grads(student, out.loss)

    with torch.no_grad():
        e_t = teacher.body(x)  # the penultimate features of each network
    e_s = student.body(x)
    distance, angle = rkd_terms(e_s, e_t)
    ce = F.cross_entropy(student.head.fc(e_s), y)
    want = ce + 3.0 * distance + 7.0 * angle
    assert torch.allclose(out.parts["ce"], ce)
    assert torch.allclose(out.parts["distance"], 3.0 * distance)
    assert torch.allclose(out.parts["angle"], 7.0 * angle)
    assert torch.allclose(out.loss, want)
    for g, w in zip(got, grads(student, want), strict=True):
        assert torch.allclose(g, w, atol=1e-6)
    assert distill.RKD is RKD
    default = RKD(teacher, student)
    assert (default.distance_weight, default.angle_weight) == (25.0, 50.0)


def test_other_layers_by_name() -> None:
    teacher, student = make_pair()
    method = RKD(teacher, student, student_layer="body.0", teacher_layer="body")
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    out = method(x, y)
    with torch.no_grad():
        distance, angle = rkd_terms(student.body[0](x), teacher.body(x))
    assert torch.allclose(out.parts["distance"], 25.0 * distance)
    assert torch.allclose(out.parts["angle"], 50.0 * angle)


def test_teacher_frozen_and_only_student_trains() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = RKD(teacher, student).train()
    params = list(method.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        out = method(torch.randn(8, 6), torch.randint(0, 3, (8,)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unknown_layer_names_the_closest() -> None:
    teacher, student = make_pair()
    with pytest.raises(ConfigError, match=r"student_layer: .*'head.flaten'.*'head.flatten'"):
        RKD(teacher, student, student_layer="head.flaten")
    with pytest.raises(ConfigError, match="default 'head.flatten'"):
        RKD(nn.Linear(6, 3), student)
    with pytest.raises(ConfigError, match=r"distance_weight"):
        RKD(teacher, student, distance_weight=-1)


def test_recipe_run(tmp_path: Path) -> None:
    recipe = {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {"teacher": {"arch": "cnn-4"}, "student_rkd": {"arch": "cnn-2"}},
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {"method": "train", "model": "teacher", "epochs": 1},
            {"method": "rkd", "teacher": "teacher", "student": "student_rkd"},
        ],
    }
    summary = Pipeline(parse_recipe(recipe), tmp_path / "run", progress=False).run()
    assert summary["stages"][1]["student_layer"] == "head.flatten"
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    rkd = [x for x in lines if x["stage"] == "student_rkd"]
    assert len(rkd) == 2 and {"ce", "distance", "angle"} <= set(rkd[-1]["train"])
    # A wrong layer name fails before anything trains, naming the stage and the field.
    recipe["stages"][1]["teacher_layer"] = "head.poool"
    with pytest.raises(ConfigError, match=r"stage 'student_rkd' \(rkd\): teacher_layer"):
        Pipeline(parse_recipe(recipe), tmp_path / "bad", progress=False).run()
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
