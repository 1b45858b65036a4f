"""Deep mutual learning: the Distiller (joint and sequential updates, fixed teacher), the
recipe stage, and resume inside a cohort."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _weights import assert_same_weights, final_weights
from torch import nn

from distill import DML, ConfigError, mutual_loss
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe

DIGITS = (1, 8)  # channels, size


def net(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create(arch, num_classes=10, in_channels=DIGITS[0])


def batch(seed: int = 0, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIGITS[0], DIGITS[1], DIGITS[1], generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> bool:
    return any(
        not torch.equal(before[k], v)
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    )


def optimizers_for(dml: DML) -> dict[str, torch.optim.Optimizer]:
    return {name: torch.optim.SGD(ps, lr=0.1) for name, ps in dml.optimizer_groups().items()}


# --- the Distiller ---------------------------------------------------------------------------


def test_joint_step_with_three_models_changes_every_model() -> None:
    models = {"a": net("cnn-2", 0), "b": net("cnn-4", 1), "c": net("cnn-2", 2)}
    dml = DML(models, temperature=2.0)
    assert dml.step_losses(*batch()) is None
    groups = dml.optimizer_groups()
    assert list(groups) == ["a", "b", "c"]
    for name, params in groups.items():
        assert {id(p) for p in params} == {id(p) for p in models[name].parameters()}
    every = {id(p) for m in models.values() for p in m.parameters()}
    assert {id(p) for p in dml.trainable_parameters()} == every

    before = {name: snapshot(m) for name, m in models.items()}
    optimizers = optimizers_for(dml)
    x, y = batch()
    out = dml(x, y)
    assert isinstance(out.logits, list) and len(out.logits) == 3
    assert set(out.parts) == {f"{p}/{n}" for p in ("ce", "kl") for n in "abc"}
    total = sum(float(v) for v in out.parts.values())
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)
    # The loss is the sum of each member's mutual loss.
    want = mutual_loss([o.detach() for o in out.logits], y, 2.0)
    assert float(out.loss.detach()) == pytest.approx(float(sum(want)), rel=1e-5)
    out.loss.backward()
    for opt in optimizers.values():
        opt.step()
    for name, model in models.items():
        assert changed(before[name], model), name


def test_joint_gradient_of_each_member_is_its_own_loss() -> None:
    models = [net("cnn-2", 0), net("cnn-2", 1)]
    twins = [copy.deepcopy(m) for m in models]
    x, y = batch(1)
    DML(models)(x, y).loss.backward()
    # Member 0 alone, with member 1's predictions as constants.
    with torch.no_grad():
        peer = twins[1](x)
    mutual_loss([twins[0](x)], y, fixed=[peer])[0].backward()
    for p, q in zip(models[0].parameters(), twins[0].parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


def test_sequential_mode_recomputes_peers_after_each_update() -> None:
    models = {"a": net("cnn-2", 0), "b": net("cnn-2", 1), "c": net("cnn-4", 2)}
    dml = DML(models, temperature=1.0, update="sequential")
    optimizers = optimizers_for(dml)
    x, y = batch(2)
    sequence = dml.step_losses(x, y)
    assert sequence is not None
    seen = []
    for name, out in sequence:
        # Expected: this member's loss with every peer's predictions from its current weights.
        with torch.no_grad():
            peers = [m(x) for n, m in models.items() if n != name]
            own = models[name](x)
        want = mutual_loss([own], y, 1.0, fixed=peers)[0]
        assert float(out.loss.detach()) == pytest.approx(float(want), rel=1e-5), name
        assert set(out.parts) == {f"ce/{name}", f"kl/{name}"}
        seen.append(name)
        out.loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
    assert seen == ["a", "b", "c"]


def test_sequential_peer_forwards_do_not_touch_batchnorm_statistics() -> None:
    models = {"a": net("cnn-2", 0), "b": net("cnn-2", 1)}
    dml = DML(models, update="sequential")
    optimizers = optimizers_for(dml)
    x, y = batch(3)
    reference = {name: copy.deepcopy(m).train() for name, m in models.items()}
    dml.train()
    for name, out in dml.step_losses(x, y):
        out.loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad()
    for name, model in models.items():
        reference[name](x)  # one training forward with the weights the member had
        for (key, want), got in zip(reference[name].named_buffers(), model.buffers(), strict=True):
            assert torch.equal(want, got), (name, key)


def test_fixed_teacher_is_a_target_never_updated() -> None:
    teacher = net("cnn-4", 9)
    before = snapshot(teacher)
    models = {"a": net("cnn-2", 0), "b": net("cnn-2", 1)}
    for update in ("joint", "sequential"):
        dml = DML(models, update=update, teacher=teacher)
        dml.train()
        assert not teacher.training
        assert all(not p.requires_grad for p in teacher.parameters())
        teacher_ids = {id(p) for p in teacher.parameters()}
        assert not teacher_ids & {id(p) for p in dml.trainable_parameters()}
        assert list(dml.optimizer_groups()) == ["a", "b"]
        assert not any(k.startswith("teacher.") for k in dml.trainable_state_dict())
        optimizers = optimizers_for(dml)
        x, y = batch(4)
        sequence = dml.step_losses(x, y)
        items = sequence if sequence is not None else [("all", dml(x, y))]
        for name, out in items:
            out.loss.backward()
            for opt_name, opt in optimizers.items():
                if name in ("all", opt_name):
                    opt.step()
                    opt.zero_grad()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], v) for k, v in after.items())


def test_distiller_errors() -> None:
    a = net("cnn-2", 0)
    with pytest.raises(ValueError, match="at least 2 members"):
        DML([a])
    with pytest.raises(ValueError, match="same module twice"):
        DML([a, a])
    with pytest.raises(ValueError, match="update"):
        DML([a, net("cnn-2", 1)], update="parallel")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'.'"):
        DML({"a.b": a, "c": net("cnn-2", 1)})
    DML([a], teacher=net("cnn-2", 2))  # one learner plus a fixed teacher is a cohort of two


# --- recipes -----------------------------------------------------------------------------------

RECIPE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "subset": 120, "batch_size": 32},
    "models": {"a": {"arch": "cnn-2"}, "b": {"arch": "cnn-4"}},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "stages": [{"method": "dml", "cohort": ["a", "b"], "temperature": 2.0}],
}


def run(raw: dict, out: Path, **kw: Any) -> dict:
    return Pipeline(parse_recipe(raw), out, progress=False, **kw).run()


def test_recipe_lists_every_member(tmp_path: Path) -> None:
    raw = copy.deepcopy(RECIPE)
    raw["stages"][0]["update"] = "sequential"
    summary = run(raw, tmp_path / "run")
    stage = summary["stages"][0]
    assert stage["method"] == "dml" and stage["models"] == ["a", "b"]
    assert set(stage["val_accuracy"]) == {"a", "b"}
    assert stage["update"] == "sequential" and stage["temperature"] == 2.0
    assert set(summary["models"]) == {"a", "b"}
    assert (tmp_path / "run/checkpoints/a.pt").is_file()
    assert (tmp_path / "run/checkpoints/b.pt").is_file()
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["model"]) for r in lines] == [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    assert {"ce/a", "kl/a", "ce/b", "kl/b", "loss"} <= set(lines[0]["train"])
    report = (tmp_path / "run/report.md").read_text()
    assert "## Deep mutual learning (DML)" in report and "| b | cnn-4 | learner |" in report


def test_recipe_with_a_fixed_teacher(tmp_path: Path) -> None:
    raw = copy.deepcopy(RECIPE)
    raw["models"]["t"] = {"arch": "cnn-2"}
    raw["train"]["epochs"] = 1
    raw["stages"] = [
        {"method": "train", "model": "t"},
        {"method": "dml", "cohort": ["a", "b"], "teacher": "t"},
    ]
    pipeline = Pipeline(parse_recipe(raw), tmp_path / "run", progress=False)
    summary = pipeline.run()
    teacher_after_train = torch.load(tmp_path / "run/checkpoints/t.pt", weights_only=True)
    for key, value in pipeline.models["t"].state_dict().items():
        assert torch.equal(value, teacher_after_train["state_dict"][key]), key
    assert summary["stages"][1]["teachers"] == ["t"]
    assert summary["stages"][1]["models"] == ["a", "b"]


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"cohort": ["a"]}, "stages.0.cohort"),
        ({"cohort": ["a", "a"]}, "repeated"),
        ({"cohort": ["a", "zz"]}, "stages.0.cohort.1: unknown model 'zz'"),
        ({"cohort": ["a", "b"], "update": "both"}, "stages.0.update"),
        ({"cohort": ["a", "b"], "temperature": 0}, "stages.0.temperature"),
        ({"cohort": ["a", "b"], "teacher": "c"}, "no earlier stage trains it"),
        ({"cohort": ["a", "b"], "teacher": "a"}, "cannot teach itself"),
    ],
)
def test_recipe_errors(stage: dict, message: str) -> None:
    raw = copy.deepcopy(RECIPE)
    raw["models"]["c"] = {"arch": "cnn-2"}
    raw["stages"] = [{"method": "dml", **stage}]
    with pytest.raises(ConfigError, match=message):
        parse_recipe(raw)


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("update", ["joint", "sequential"])
def test_resume_inside_a_cohort_gives_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update: str
) -> None:
    raw = copy.deepcopy(RECIPE)
    raw["stages"][0]["update"] = update
    run(raw, tmp_path / "straight")

    original = Pipeline._append_metrics

    def crash_after_first_epoch(self, *args, **kwargs):  # noqa: ANN001, ANN202
        original(self, *args, **kwargs)
        raise Crash

    monkeypatch.setattr(Pipeline, "_append_metrics", crash_after_first_epoch)
    with pytest.raises(Crash):
        run(raw, tmp_path / "crashed")
    monkeypatch.setattr(Pipeline, "_append_metrics", original)
    assert any((tmp_path / "crashed/checkpoints/b/dml").glob("epoch_*.pt"))
    run(raw, tmp_path / "crashed", resume=True)

    names = ("a", "b")
    want = final_weights(tmp_path / "straight", names)
    assert_same_weights(want, final_weights(tmp_path / "crashed", names))
    lines = (tmp_path / "crashed/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4, "two epochs, two members, no line repeated or lost"
