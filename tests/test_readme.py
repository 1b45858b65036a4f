"""The README stays true: its Python example runs, its recipes parse, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from _readme import README, code_after

from distill.cli import build_parser
from distill.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_python_example_trains_a_kd_student(monkeypatch: pytest.MonkeyPatch) -> None:
    code = code_after("<!-- example:kd -->")
    assert len(code.strip().splitlines()) <= 25
    printed: list = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(a))
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    accuracy = printed[-1][0]["accuracy"]
    assert accuracy > 0.8, accuracy


def test_yaml_blocks_are_valid_recipes() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README, re.S)
    recipes = [yaml.safe_load(b) for b in blocks]
    full = [r for r in recipes if isinstance(r, dict) and "stages" in r]
    assert full, "the README shows a complete recipe"
    for raw in full:
        parse_recipe(raw)


def test_shipped_recipes_parse() -> None:
    paths = sorted((ROOT / "recipes").glob("*.yaml"))
    assert paths
    for path in paths:
        load_recipe(path)


def test_cli_reference_matches_parser() -> None:
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    for command in re.findall(r"^distill (\w+)", README, re.M):
        assert command in commands, command


def test_write_your_own_method_example_trains_and_runs_from_a_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path, tiny_recipe: dict
) -> None:
    import torch
    from torch.utils.data import DataLoader

    from distill.data import load_data
    from distill.methods import METHODS
    from distill.models import create
    from distill.pipeline import Pipeline

    method_code = code_after("<!-- example:own-method -->")
    stage_code = code_after("To use it in recipes")
    assert 20 <= len(method_code.strip().splitlines()) <= 30
    data = load_data("digits", subset=200)
    losses: list[float] = []

    def fit(method, epochs):  # noqa: ANN001, ANN202
        optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
        for _ in range(epochs):
            for x, y in DataLoader(data.train, batch_size=32):
                out = method(x, y)
                assert set(out.parts) == {"ce", "mse"}
                losses.append(float(out.loss.detach()))
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()

    torch.manual_seed(0)
    namespace = {"create": create, "fit": fit,
                 "teacher": create("cnn-4", num_classes=10, in_channels=1)}
    exec(compile(method_code, "README.md", "exec"), namespace)  # noqa: S102
    assert len(losses) == 8 * 5 and losses[-1] < losses[0]
    registry = dict(METHODS)  # the one registry, restored after the test
    monkeypatch.setattr("distill.methods.METHODS", registry)
    monkeypatch.setattr("distill.recipe.METHODS", registry)
    # As a user module would (without this test file's `from __future__ import annotations`).
    exec(compile(stage_code, "README.md", "exec", dont_inherit=True), namespace)  # noqa: S102
    assert registry["logits"] is namespace["LogitMatchingStage"]
    tiny_recipe["stages"][2] = {"method": "logits", "teacher": "teacher", "student": "student_kd"}
    summary = Pipeline(parse_recipe(tiny_recipe), tmp_path / "run", progress=False).run()
    assert summary["stages"][2]["method"] == "logits"
    assert summary["stages"][2]["alpha"] == 0.5
