"""The LM benchmark's recipes and table, without training anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from distill.demo import demo_recipe
from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import lm  # noqa: E402


def test_the_benchmark_runs_the_demo_with_one_kd_stage_per_divergence() -> None:
    base = lm.budget(quick=False)
    assert base == demo_recipe("python-stdlib", ["kd"])  # the demo's models, data and KD
    recipe = lm.seed_recipe(base, 2, Path("teacher.pt"))
    parsed = parse_recipe(recipe)
    assert parsed.seed == 2 and recipe["models"]["teacher"]["checkpoint"] == "teacher.pt"
    assert [s.method for s in parsed.stages] == ["train"] + ["kd"] * len(lm.KINDS)
    kinds = [s.loss.kind if s.loss else "forward_kl" for s in parsed.stages[1:]]
    assert kinds == ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "tvd"]
    demo_kd = next(s for s in base["stages"] if s["method"] == "kd")
    for stage in parsed.stages[1:]:  # every student from its own copy, the demo's T and α
        assert (stage.temperature, stage.alpha) == (demo_kd["temperature"], demo_kd["alpha"])
    students = [s.student for s in parsed.stages[1:]]
    assert len(set(students)) == len(students)
    teacher = lm.teacher_recipe(base)
    assert list(teacher["models"]) == ["teacher"] and teacher["seed"] == 0


def test_the_table_reads_the_summaries_and_pairs_gains_by_seed() -> None:
    base = lm.budget(quick=False)

    def summary(alone: float, kd: list[float]) -> dict[str, Any]:
        models = {"student": {"test_perplexity": alone, "params": 10},
                  "teacher": {"test_perplexity": 5.0, "params": 100}}
        for index, value in enumerate(kd):
            models[f"student_kd{index}"] = {"test_perplexity": value}
        return {"models": models}

    results = [summary(7.0, [6.5, 7.5, 6.9, 6.8, 7.0]), summary(8.0, [7.0, 8.5, 7.9, 7.8, 8.0])]
    text = lm.markdown(results, base, wall=120.0)
    assert text.startswith(lm.BEGIN) and text.endswith(lm.END)
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| KD")}
    # forward KL: gains 0.5 and 1.0 per seed: mean 0.75, sample std 0.354
    assert "| +0.750 ± 0.354 |" in rows["KD, forward KL (Hinton's KD)"]
    assert "| -0.500 ± 0.000 |" in rows["KD, reverse KL"]
    assert "7.500 ± 0.707" in text  # the student alone's mean ± std
    assert "wall time 2.0 min" in text


def test_the_quick_budget_is_smaller() -> None:
    small, full = lm.budget(quick=True), lm.budget(quick=False)
    assert small["data"]["subset"] < full["data"]["subset"]
    assert small["train"]["epochs"] < full["train"]["epochs"]
