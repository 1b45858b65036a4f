"""Recipes run end to end: outputs, hand-over between stages, resume, refusal to overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _weights import assert_same_weights, final_weights

from distill.errors import ConfigError
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


class Crash(RuntimeError):
    pass


def run(raw: dict, out: Path, **kw) -> dict:
    return Pipeline(parse_recipe(raw), out, progress=False, **kw).run()


def test_outputs_and_stage_hand_over(tmp_path: Path, tiny_recipe: dict) -> None:
    out = tmp_path / "run"
    summary = run(tiny_recipe, out)
    for name in [
        "summary.json",
        "metrics.jsonl",
        "report.md",
        "recipe.yaml",
        "val_accuracy.png",
        "final_accuracy.png",
        "checkpoints/teacher.pt",
        "checkpoints/student_kd.pt",
    ]:
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["data"] == {"name": "digits", "train": 240, "val": 60}
    assert list(summary["models"]) == ["teacher", "student", "student_kd"]
    for model in summary["models"].values():
        assert 0.0 <= model["val_accuracy"] <= 1.0 and model["params"] > 0
    assert [s["method"] for s in summary["stages"]] == ["train", "train", "kd"]
    assert summary["stages"][2]["teachers"] == ["teacher"]
    assert summary["stages"][2]["temperature"] == 4.0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * 2
    kd_line = lines[-1]
    assert kd_line["stage"] == "student_kd" and kd_line["model"] == "student_kd"
    assert {"ce", "kd", "loss"} <= set(kd_line["train"]) and kd_line["lr"] >= 0
    assert "| student_kd | cnn-2 |" in (out / "report.md").read_text()


def test_teacher_loaded_from_checkpoint(tmp_path: Path, tiny_recipe: dict) -> None:
    first = tmp_path / "first"
    run(tiny_recipe, first)
    raw = dict(tiny_recipe)
    raw["models"] = {
        "teacher": {"arch": "cnn-4", "checkpoint": str(first / "checkpoints/teacher.pt")},
        "student_kd": {"arch": "cnn-2"},
    }
    raw["stages"] = [tiny_recipe["stages"][2]]
    summary = run(raw, tmp_path / "second")
    assert summary["models"]["teacher"]["trained_by"] == "checkpoint"
    want = summary["models"]["teacher"]["val_accuracy"]
    got = json.loads((first / "summary.json").read_text())["models"]["teacher"]["val_accuracy"]
    assert want == pytest.approx(got)


@pytest.mark.parametrize("crash_at", [1, 3, 5])
def test_resume_gives_same_weights_as_straight_run(
    tmp_path: Path, tiny_recipe: dict, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    straight = tmp_path / "straight"
    run(tiny_recipe, straight)

    calls = {"n": 0}
    original = Pipeline._append_metrics

    def crashing(self, *args, **kwargs):  # noqa: ANN001, ANN202
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash

    out = tmp_path / "crashed"
    monkeypatch.setattr(Pipeline, "_append_metrics", crashing)
    with pytest.raises(Crash):
        run(tiny_recipe, out)
    monkeypatch.setattr(Pipeline, "_append_metrics", original)
    assert not (out / "summary.json").exists()

    with pytest.raises(ConfigError, match="--resume"):
        run(tiny_recipe, out)
    summary = run(tiny_recipe, out, resume=True)

    want, got = final_weights(straight), final_weights(out)
    assert set(want) == set(got) == {"teacher", "student", "student_kd"}
    assert_same_weights(want, got)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6, "a resumed run repeats no metric line and loses none"
    assert summary["models"]["student_kd"]["val_accuracy"] == pytest.approx(
        json.loads((straight / "summary.json").read_text())["models"]["student_kd"]["val_accuracy"]
    )


def test_a_run_needs_resume_and_a_changed_seed_trains_every_stage_again(
    tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(tiny_recipe, out)
    tiny_recipe["seed"] = 1
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        run(tiny_recipe, out)
    capsys.readouterr()
    run(tiny_recipe, out, resume=True)
    log = capsys.readouterr().out
    assert "the recipe changed (seed: 0 -> 1)" in log
    assert "trained again: teacher, student, student_kd; kept: none" in log
    run(tiny_recipe, tmp_path / "seed1")
    assert_same_weights(final_weights(tmp_path / "seed1"), final_weights(out))


def test_resume_of_finished_run_trains_nothing(tmp_path: Path, tiny_recipe: dict) -> None:
    out = tmp_path / "run"
    first = run(tiny_recipe, out)
    before = (out / "checkpoints/student_kd.pt").read_bytes()
    second = run(tiny_recipe, out, resume=True)
    assert second["models"] == first["models"]
    assert (
        torch.load(out / "checkpoints/student_kd.pt", weights_only=True)["state_dict"].keys()
        == torch.load(__import__("io").BytesIO(before), weights_only=True)["state_dict"].keys()
    )
