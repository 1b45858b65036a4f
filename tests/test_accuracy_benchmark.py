"""The accuracy benchmark's recipes and report, without training anything.

A real run takes an hour; these check that every recipe it builds is valid, that the table's
gains are per-seed differences against the right baseline, and that the docs writer replaces
its own section and nothing else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import accuracy  # noqa: E402


def namespace(**overrides: Any) -> argparse.Namespace:
    fields = dict.fromkeys(
        (
            "seeds",
            "subset",
            "epochs",
            "teacher_epochs",
            "hint_epochs",
            "batch_size",
            "large_teacher",
            "large_assistants",
        )
    )
    fields["quick"] = False
    fields.update(overrides)
    return argparse.Namespace(**fields)


@pytest.mark.parametrize("quick", [False, True])
def test_recipes_are_valid_and_load_the_shared_teachers(tmp_path: Path, quick: bool) -> None:
    b = accuracy.budget(namespace(quick=quick))
    hp = {"temperature": 2.0, "alpha": 0.5}
    recipe, rows = accuracy.build_recipe(1, b, hp, tmp_path, None)
    parsed = parse_recipe(recipe)
    assert parsed.seed == 1
    # Teachers are loaded, never trained per seed.
    for name in ("teacher", "teacher_large"):
        assert recipe["models"][name]["checkpoint"].endswith("teacher.pt")
        assert not any(s.get("model") == name for s in recipe["stages"])
    kd_like = [s for s in recipe["stages"] if s["method"] in ("kd", "fitnets", "takd")]
    assert len(kd_like) == 6  # KD, KD + logit standardisation, FitNets, TAKD, large-gap KD, TAKD
    assert all((s["temperature"], s["alpha"]) == (2.0, 0.5) for s in kd_like)
    # Every row names a model of the recipe, and every baseline is trained alone.
    trained_alone = {s["model"] for s in recipe["stages"] if s["method"] == "train"}
    for _label, name, _group, base in rows:
        assert name in recipe["models"]
        assert base is None or base in trained_alone
    parse_recipe(accuracy.teacher_recipe(b["large_teacher"], b, None))


def test_explicit_flags_override_the_budget() -> None:
    b = accuracy.budget(namespace(quick=True, seeds=2, large_teacher="resnet56"))
    assert (b["seeds"], b["large_teacher"], b["subset"]) == (2, "resnet56", 3000)


def summary(acc: dict[str, float]) -> dict[str, Any]:
    return {
        "models": {
            n: {"arch": "cnn-4" if "peer" in n else "cnn-2", "params": 10, "test_accuracy": a}
            for n, a in acc.items()
        },
        "stages": [{"models": [n], "seconds": 2.0} for n in acc],
        "data": {"train": 9000, "val": 1000, "test": 10000},
    }


def test_gains_are_per_seed_differences_against_the_same_architecture(tmp_path: Path) -> None:
    b = accuracy.budget(namespace())
    _, rows = accuracy.build_recipe(0, b, {"temperature": 4.0, "alpha": 0.9}, tmp_path, None)
    names = [r[1] for r in rows]
    seed0 = summary({n: 0.80 for n in names} | {"student_kd": 0.82, "peer_alone": 0.85})
    seed1 = summary({n: 0.70 for n in names} | {"student_kd": 0.73, "peer_alone": 0.75})
    teachers = {}
    for arch in ("resnet20", "resnet56"):
        teachers[f"teacher ({arch})"] = summary({"teacher": 0.9})
        teachers[f"teacher ({arch})"]["models"]["teacher"]["arch"] = arch
    table = accuracy.aggregate([seed0, seed1], rows, teachers)
    kd = accuracy.by_name(table, "student_kd")
    assert kd["mean"] == pytest.approx(77.5)
    assert kd["gain"] == pytest.approx(2.5)  # mean of +2 and +3, not 77.5 - 75
    assert kd["gain_std"] == pytest.approx(0.7071, abs=1e-3)
    assert accuracy.by_name(table, "dml_peer_large")["gain"] == pytest.approx(-5.0)
    assert accuracy.by_name(table, "student")["gain"] is None
    assert table[0]["group"] == "teacher" and table[0]["std"] is None
    text = accuracy.markdown(
        table, b, namespace(), {"temperature": 4.0, "alpha": 0.9}, "defaults", 60.0, seed0["data"]
    )
    assert "| KD | `cnn-2` | 10 | 77.50 ± 6.36 | +2.50 ± 0.71 |" in text
    assert "KD gains 2.50 points" in text and "meets the +1.0-point bar" in text
    assert text.startswith(accuracy.BEGIN) and text.rstrip().endswith(accuracy.END)
    assert "| KD | 77.50 ± 6.36 | +2.50 ± 0.71 |" in accuracy.readme_section(table, b)


def test_docs_writer_replaces_only_its_section(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Page\n\nintro\n")
    first = f"{accuracy.BEGIN}\none\n{accuracy.END}\n"
    accuracy.replace_section(page, accuracy.BEGIN, accuracy.END, first, "## Accuracy")
    accuracy.replace_section(
        page, accuracy.BEGIN, accuracy.END, first.replace("one", "two"), "## Accuracy"
    )
    text = page.read_text()
    assert text.count(accuracy.BEGIN) == 1 and "two" in text and "one" not in text
    assert text.startswith("# Page\n\nintro\n\n## Accuracy\n")


def test_finished_runs_are_read_back_with_their_wall_time(tmp_path: Path, tiny_recipe) -> None:
    out = tmp_path / "run"
    first = accuracy.run(tiny_recipe, out)
    assert first["wall_seconds"] > 0
    metrics = (out / "metrics.jsonl").read_text()
    again = accuracy.run(tiny_recipe, out)  # read back: nothing retrained
    assert (out / "metrics.jsonl").read_text() == metrics
    assert again["wall_seconds"] == pytest.approx(first["wall_seconds"], abs=0.1)
    assert again["models"] == first["models"]
    exported = accuracy.export_recipes(tmp_path / "recipes")
    path = next(p for p in exported if p.stem == "run")
    assert f"--out {out.resolve()}" in path.read_text()
    assert (
        parse_recipe(yaml.safe_load(path.read_text())).fingerprint()
        == parse_recipe(tiny_recipe).fingerprint()
    )


def test_exported_teacher_paths_are_relative_to_the_repository(tmp_path: Path) -> None:
    b = accuracy.budget(namespace(quick=True))
    recipe, _ = accuracy.build_recipe(
        0, b, {"temperature": 4.0, "alpha": 0.9}, Path("runs/x"), None
    )
    accuracy.RAN["seed-0"] = (recipe, Path("runs/x/seed-0"))
    try:
        (path,) = (p for p in accuracy.export_recipes(tmp_path) if p.stem == "seed-0")
    finally:
        del accuracy.RAN["seed-0"]
    loaded = yaml.safe_load(path.read_text())
    assert (
        loaded["models"]["teacher"]["checkpoint"]
        == "runs/x/teacher-resnet20/checkpoints/teacher.pt"
    )
    assert "--out runs/x/seed-0" in path.read_text()


def test_a_folder_of_another_recipe_is_refused_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "teacher-resnet20"
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text('{"fingerprint": "another", "source": "x.yaml"}')
    assert accuracy.cli(["--quick", "--out", str(tmp_path), "--no-docs"]) == 2
    err = capsys.readouterr().err
    assert "different recipe" in err and "pass another --out" in err
    assert sorted(p.name for p in folder.iterdir()) == ["progress.json"]


def test_a_budget_of_zero_seeds_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        accuracy.cli(["--quick", "--seeds", "0", "--no-docs"])
    assert exc.value.code == 2
    assert "--seeds must be at least 1; got 0" in capsys.readouterr().err
