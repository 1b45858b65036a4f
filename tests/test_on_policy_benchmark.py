"""The on-policy benchmark's recipes and table, without training anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import on_policy  # noqa: E402


def test_each_seed_trains_the_student_alone_and_every_divergence_at_every_share() -> None:
    base = on_policy.budget(quick=False)
    recipe = on_policy.seed_recipe(base, 2, Path("teacher.pt"))
    parsed = parse_recipe(recipe)
    assert parsed.seed == 2 and recipe["models"]["teacher"]["checkpoint"] == "teacher.pt"
    kd = [s for s in parsed.stages if s.method == "kd"]
    assert [s.method for s in parsed.stages][0] == "train" and len(kd) == 6
    settings = {(s.loss.kind, s.on_policy.fraction if s.on_policy else 0.0) for s in kd}
    assert settings == {(k, f) for k in ("reverse_kl", "jsd") for f in (0.0, 0.5, 1.0)}
    for stage in kd:  # the demo's KD settings, the benchmark's generation settings
        assert (stage.temperature, stage.alpha, stage.cache) == (1.0, 0.5, "teacher")
        if stage.on_policy:
            assert stage.on_policy.max_new_tokens == on_policy.MAX_NEW_TOKENS
            assert stage.on_policy.prompt_tokens == on_policy.PROMPT_TOKENS


def test_the_warm_start_pair_continues_the_student_alone_for_one_epoch() -> None:
    base = on_policy.budget(quick=False)
    recipe = on_policy.warm_recipe(base, 1, Path("teacher.pt"), Path("seed-1/student.pt"))
    parsed = parse_recipe(recipe)
    assert set(parsed.models) == {"teacher", "warm_l0_f000", "warm_l0_f100"}
    assert {m.checkpoint for n, m in parsed.models.items() if n != "teacher"} == {
        "seed-1/student.pt"
    }
    off, on = parsed.stages
    assert off.on_policy is None and on.on_policy.fraction == 1.0
    assert off.loss.kind == on.loss.kind == "reverse_kl"
    assert on.train.epochs == 1 and on.train.optimizer.lr == 1.0e-3


def fake_results(offsets: list[float]) -> list[dict[str, Any]]:
    """One result per seed: perplexity 10 + index·offset, NLL 2 + fraction·offset per model."""
    results = []
    for offset in offsets:
        models, nll, costs = {}, {}, {}
        names = ["teacher", "student"] + [
            on_policy.model_name(i, f) for i in range(2) for f in on_policy.FRACTIONS
        ]
        names += [on_policy.warm_name(f) for f in on_policy.WARM]
        for index, name in enumerate(names):
            fraction = float(name[-3:]) / 100 if name[-4:-3] == "f" else 0.5
            models[name] = {"test_perplexity": 10 + index * offset, "params": 100 + index}
            nll[name] = {"nll": 2 - fraction * offset, "length": 60.0, "tokens": 6000.0}
            costs[name] = (0.1 + fraction, fraction / 2)
        results.append({"summary": {"models": models}, "nll": nll, "costs": costs})
    return results


def test_the_table_and_what_wins() -> None:
    base = on_policy.budget(quick=False)
    text = on_policy.markdown(fake_results([1.0, 2.0]), base, wall=600.0)
    assert text.startswith(on_policy.BEGIN) and text.endswith(on_policy.END)
    assert "| KD, reverse KL, λ = 1 | 16.000 ± 2.828 | 0.500 ± 0.707 | 60.0 | 1.100 | 50% |" in text
    assert "Lowest test perplexity: the student alone (11.500)" in text
    assert "Lowest teacher NLL of the student's own samples: KD with reverse KL at λ = 1" in text
    # per seed, λ = 1 − λ = 0 for reverse KL: perplexity +2·offset, NLL −offset
    assert "reverse KL, λ = 1 − λ = 0, per seed: perplexity +3.000 ± 1.414" in text
    assert "teacher NLL -1.500 ± 0.707 (better in 0/2 and 2/2 seeds)" in text
    assert "wall time 10.0 min" in text
    # the warm-start pair: indices 8 and 9, fractions 0 and 1
    assert "| student alone, then 1 epoch of KD, reverse KL, λ = 1 | 23.500 ± 6.364 |" in text
    assert "λ = 1 − λ = 0, per seed: perplexity +1.500 ± 0.707, teacher NLL -1.500" in text


def test_step_costs_read_the_generation_share_from_the_records(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"data": {"train": 40}}))
    records = [
        {"stage": "s", "seconds": 10.0, "train": {"gen_seconds": 0.5}},
        {"stage": "s", "seconds": 10.0, "train": {"gen_seconds": 1.5}},
        {"stage": "other", "seconds": 99.0, "train": {}},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    per_step, share = on_policy.step_costs(tmp_path, "s", batch_size=8)  # 5 batches an epoch
    assert per_step == 20.0 / 10 and share == (0.5 * 5 + 1.5 * 5) / 20.0
