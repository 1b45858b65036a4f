"""The README stays true: its Python example runs, its recipes parse, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from distill.cli import build_parser
from distill.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_after(marker: str, language: str = "python") -> str:
    start = README.index(marker)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block after {marker}"
    return match.group(1)


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
