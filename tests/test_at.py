"""Attention transfer: the loss against its formula, pairs by probe, pooling, the recipe."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _readme import run_snippet

import distill
from distill.errors import ConfigError
from distill.methods.at import ATPair, propose_at_pairs
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return (
        create("resnet8", num_classes=10, in_channels=1),
        create("cnn-2", num_classes=10, in_channels=1),
    )


def written_out(teacher, student, x, y, pairs, beta):  # noqa: ANN001, ANN201
    """CE + β Σ_j mean over batch and positions of (q_s − q_t)², q = normalise(mean_c f²),
    the larger map average-pooled to the smaller."""
    feats = {}
    hooks = [
        m.get_submodule(name).register_forward_hook(
            lambda mod, a, out, key=(role, name): feats.__setitem__(key, out)
        )
        for role, m, names in (("s", student, [p[0] for p in pairs]),
                               ("t", teacher, [p[1] for p in pairs]))
        for name in names
    ]
    logits = student(x)
    with torch.no_grad():
        teacher(x)
    for h in hooks:
        h.remove()
    total = torch.zeros(())
    for s_name, t_name in pairs:
        fs, ft = feats[("s", s_name)], feats[("t", t_name)]
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
        qs = F.normalize(fs.pow(2).mean(1).flatten(1), dim=1)
        qt = F.normalize(ft.pow(2).mean(1).flatten(1), dim=1)
        total = total + ((qs - qt) ** 2).mean()
    return F.cross_entropy(logits, y), beta * total


def test_loss_is_ce_plus_beta_times_the_attention_distance() -> None:
    teacher, student = models()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    pairs = [("stages.0", "stages.1"), ("stages.1", "stages.2")]  # 8×8 vs 4×4: pooled
    at = distill.AT(teacher, student, x, pairs=pairs, beta=500.0)
    teacher.eval()
    out = at(x, y)
    ce, term = written_out(teacher, student, x, y, pairs, 500.0)
    assert torch.allclose(out.parts["ce"], ce, atol=1e-5)
    assert torch.allclose(out.parts["at"], term, atol=1e-5)
    assert torch.allclose(out.loss, ce + term, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_default_pairs_by_probe_match_sections_of_the_same_size() -> None:
    teacher, student = models()
    x = torch.randn(4, 1, 28, 28)
    # resnet8 sections: 28, 14, 7; cnn-2 sections: 28, 14.
    pairs = propose_at_pairs(teacher, student, {"inputs": x}, "classification")
    assert pairs == [ATPair(student="stages.0", teacher="stages.0"),
                     ATPair(student="stages.1", teacher="stages.1")]
    assert distill.AT(teacher, student, x).pairs == pairs


def test_bad_layers_are_named() -> None:
    teacher, student = models()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ConfigError, match="pairs.0.teacher: .* no submodule 'stages.7'"):
        distill.AT(teacher, student, x, pairs=[("stages.0", "stages.7")])
    with pytest.raises(ConfigError, match="layer 'head.fc' gives shape \\[2, 10\\]"):
        distill.AT(teacher, student, x, pairs=[("head.fc", "stages.0")])


def test_the_shipped_recipe_runs(tmp_path: Path, tiny_recipe: dict) -> None:
    shipped = load_recipe(ROOT / "recipes" / "at.yaml")
    stage = next(s for s in shipped.stages if s.method == "at")
    assert stage.beta == 1000.0 and stage.p == 2.0
    raw = copy.deepcopy(tiny_recipe)
    raw["stages"][2] = {"method": "at", "teacher": "teacher", "student": "student_kd"}
    summary = Pipeline(parse_recipe(raw), tmp_path / "run", progress=False).run()
    at_stage = summary["stages"][2]
    assert at_stage["method"] == "at" and at_stage["beta"] == 1000.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert last["phase"] == "at" and set(last["train"]) == {"ce", "at", "loss"}
    assert all(math.isfinite(v) and v > 0 for v in last["train"].values())


def test_readme_example_runs() -> None:
    sample = torch.randn(8, 1, 8, 8)  # the README's FitNets example defines x
    assert run_snippet("<!-- example:at -->", x=sample) == [("AT", 8)]
