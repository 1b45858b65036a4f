"""The top-k and LM speed benchmarks' recipes, tables and verdicts, without training."""

from __future__ import annotations

import sys
from pathlib import Path

from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import lm_speed  # noqa: E402
import lm_topk  # noqa: E402


def test_every_top_k_row_trains_the_same_student_by_one_stage() -> None:
    base = lm_topk.budget(quick=False)
    rows = {
        name: parse_recipe(lm_topk.row_recipe(base, 1, Path("teacher.pt"), store))
        for name, store in (("alone", "alone"), ("live", None), ("k8", Path("stores/k8")))
    }
    for recipe in rows.values():  # one stage, the same student, seed and teacher checkpoint
        assert recipe.seed == 1 and len(recipe.stages) == 1
        assert recipe.models["student"] == rows["alone"].models["student"]
        assert recipe.models["teacher"].checkpoint == "teacher.pt"
    assert rows["alone"].stages[0].method == "train"
    live, stored = rows["live"].stages[0], rows["k8"].stages[0]
    assert live.method == stored.method == "kd" and live.cache == "none"  # live: no cache
    assert live.teacher_logits is None and stored.teacher_logits == "stores/k8"
    assert (live.temperature, live.alpha) == (stored.temperature, stored.alpha)


def test_the_top_k_table_reads_each_row_over_seeds() -> None:
    base = lm_topk.budget(quick=False)

    def row(val: float, test: float) -> dict[str, float]:
        return {"val_perplexity": val, "test_perplexity": test}

    results = [
        {"alone": row(7.0, 6.5), "live": row(6.8, 6.3), 8: row(6.9, 6.4)},
        {"alone": row(8.0, 7.5), "live": row(7.8, 7.3), 8: row(7.9, 7.4)},
    ]
    teacher = {"models": {"teacher": {"test_perplexity": 6.0}}}
    text = lm_topk.markdown(results, base, {8: 54.0}, teacher, wall=60.0)
    k8 = "| KD from the store, k = 8 | 54 | 7.400 ± 0.707 | 6.900 ± 0.707 | +0.100 ± 0.000 |"
    assert k8 in text
    assert "| student alone |  | 7.500 ± 0.707 | 7.000 ± 0.707 | +0.200 ± 0.000 |" in text
    assert "| KD, live teacher |  | 7.300 ± 0.707 | 6.800 ± 0.707 |  |" in text
    assert "dense float16 logits: 16 bytes per token" in text  # 2 bytes × the largest k


def test_speed_targets_say_met_or_by_how_much_they_are_missed() -> None:
    med = {"alone": 1.0, "dense": 2.2, "chunked": 3.0, "stored": 1.5, "trl": 2.0}
    peak = {"dense": 100, "chunked": 30}
    lines = lm_speed.targets(med, peak, "alone", "dense", "chunked", "stored", "trl", 0.006)
    assert lines[0].endswith("1.50× (**missed** by 30%).")
    assert lines[1].endswith("1.10× (**missed** by 10%).")
    assert lines[2].endswith("0.30× (met).") and lines[3].endswith("0.60% (met).")
    without_trl = lm_speed.targets(med, peak, "alone", "dense", "chunked", "stored", None, 0.02)
    assert "not measured (trl not importable)" in without_trl[1]
    assert "**missed** by 100%" in without_trl[3]
