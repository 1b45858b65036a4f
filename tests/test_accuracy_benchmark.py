"""The accuracy benchmark's recipes and report, without training anything.

A real run takes an hour; these check that every recipe it builds is valid, that the table's
gains are per-seed differences against the right baseline, and that the docs writer replaces
its own section and nothing else.
"""

from __future__ import annotations

import argparse
import json
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


def write_curves(
    run_dir: Path, records: list[tuple[str, str, str, list[dict[str, float]]]]
) -> None:
    """A ``metrics.jsonl`` of ``(stage, phase, model, epochs)`` runs, each epoch the loss parts
    plus ``val_loss`` and ``val_accuracy``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for stage, phase, model, epochs in records:
        for i, epoch in enumerate(epochs, 1):
            parts = {k: v for k, v in epoch.items() if not k.startswith("val_")}
            lines.append(
                {
                    "stage": stage,
                    "phase": phase,
                    "method": "x",
                    "epoch": i,
                    "model": model,
                    "train": {**parts, "loss": sum(parts.values())},
                    "val_accuracy": epoch["val_accuracy"],
                    "val_loss": epoch["val_loss"],
                }
            )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def why_table(tmp_path: Path, acc: dict[str, float]) -> list[dict[str, Any]]:
    """The table of two seeds where every cnn-2 student scores 80% but those in ``acc``
    (the same per-seed differences: gains with no spread)."""
    b = accuracy.budget(namespace())
    _, rows = accuracy.build_recipe(0, b, {"temperature": 4.0, "alpha": 0.9}, tmp_path, None)
    names = [r[1] for r in rows]
    seeds = [
        summary({n: 0.80 + d for n in names} | {k: v + d for k, v in acc.items()})
        for d in (0, 0.01)
    ]
    teachers = {}
    for arch in ("resnet20", "resnet56"):
        teachers[f"teacher ({arch})"] = summary({"teacher": 0.9})
        teachers[f"teacher ({arch})"]["models"]["teacher"]["arch"] = arch
    return accuracy.aggregate(seeds, rows, teachers)


def test_why_sentences_read_the_curves_of_the_methods_that_do_not_help(tmp_path: Path) -> None:
    # AT loses 3 points, PKT gains 1.5 (below KD's 2), DIST wins 5.
    table = why_table(
        tmp_path,
        {"student_kd": 0.82, "student_at": 0.77, "student_pkt": 0.815, "student_dist": 0.85},
    )
    b = accuracy.budget(namespace())
    recipe, _ = accuracy.build_recipe(0, b, {"temperature": 4.0, "alpha": 0.9}, tmp_path, None)
    alone = [
        {"ce": 1.2, "val_loss": 1.0, "val_accuracy": 0.6},
        {"ce": 0.6, "val_loss": 0.55, "val_accuracy": 0.8},
    ]
    at = [  # two seeds: the sentence must give their means
        [
            {"ce": 1.3, "at": 0.9, "val_loss": 1.1, "val_accuracy": 0.5},
            {"ce": 0.9, "at": 0.45, "val_loss": 0.8, "val_accuracy": 0.7},
        ],
        [
            {"ce": 1.3, "at": 0.7, "val_loss": 1.1, "val_accuracy": 0.5},
            {"ce": 1.1, "at": 0.55, "val_loss": 1.0, "val_accuracy": 0.7},
        ],
    ]
    dist = [
        {"ce": 1.0, "inter": 2.0, "intra": 2.0, "val_loss": 0.9, "val_accuracy": 0.7},
        {"ce": 0.5, "inter": 1.0, "intra": 1.0, "val_loss": 0.5, "val_accuracy": 0.85},
    ]
    for seed in (0, 1):
        run_dir = tmp_path / f"seed-{seed}"
        write_curves(
            run_dir,
            [
                ("student", "train", "student", alone),
                ("student_at", "at", "student_at", at[seed]),
                ("student_dist", "dist", "student_dist", dist),
                ("student_pkt", "pkt", "student_pkt", [{**e, "pkt": e["ce"]} for e in alone]),
            ],
        )
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    curves = accuracy.read_curves([tmp_path / "seed-0", tmp_path / "seed-1"])
    assert curves["student_at"]["runs"] == 2 and curves["student_at"]["stage"]["beta"] == 1000
    lines = accuracy.findings(table, 2, None, curves)
    why, pkt = [line for line in lines if line.startswith("Why ")]
    assert why.startswith("Why AT does not help here (-3.00 ± 0.00 points): ")
    assert "its attention term is 0.50× the CE term" in why  # 0.5 / 1.0, means of the seeds
    assert "went down from 0.80 to 0.50" in why
    assert "training cross-entropy ends at 1.00 against 0.60 alone" in why
    assert "(validation loss 0.90 against 0.55)" in why
    assert "the term competes with the labels, which the 10-parameter student" in why
    assert "likely β = 1000" in why
    assert lines.index(why) == lines.index(next(x for x in lines if x.startswith("AT: "))) + 1
    assert pkt.startswith("Why PKT stays below KD here (+1.50 ± 0.00 points; KD +2.00 ± 0.00)")
    assert "it fits the labels about as well as alone; the curves show no clear cause." in pkt
    assert not any("Why DIST" in line for line in lines)
    assert not any(line.startswith("The methods on one student split") for line in lines)
    assert not any(line.startswith("Why ") for line in accuracy.findings(table, 2))
    page = accuracy.markdown(
        table,
        b,
        namespace(),
        {"temperature": 4.0, "alpha": 0.9},
        "x",
        1.0,
        {"train": 9000, "val": 1000, "test": 10000},
        curves=curves,
    )
    assert f"- {why}" in page


def test_why_sentences_for_an_earlier_phase_and_standardised_logits(tmp_path: Path) -> None:
    table = why_table(tmp_path, {"student_kd": 0.82, "student_fsp": 0.795, "student_kd_ls": 0.80})
    b = accuracy.budget(namespace())
    recipe, _ = accuracy.build_recipe(0, b, {"temperature": 4.0, "alpha": 0.9}, tmp_path, None)
    run_dir = tmp_path / "seed-0"
    write_curves(
        run_dir,
        [
            ("student", "train", "student", [{"ce": 0.6, "val_loss": 0.5, "val_accuracy": 0.8}]),
            (
                "student_kd",
                "kd",
                "student_kd",
                [{"ce": 0.05, "kd": 2.5, "val_loss": 0.5, "val_accuracy": 0.82}],
            ),
            (
                "student_fsp",
                "fsp",
                "student_fsp",
                [
                    {"fsp": 300.0, "val_loss": 2.3, "val_accuracy": 0.1},
                    {"fsp": 150.0, "val_loss": 2.3, "val_accuracy": 0.1},
                    {"fsp": 100.0, "val_loss": 2.3, "val_accuracy": 0.1},
                ],
            ),
            (
                "student_fsp",
                "ce",
                "student_fsp",
                [{"ce": 0.62, "val_loss": 0.52, "val_accuracy": 0.79}],
            ),
            (
                "student_kd_ls",
                "kd",
                "student_kd_ls",
                [
                    {"ce": 0.2, "kd": 0.4, "val_loss": 1.8, "val_accuracy": 0.7},
                    {"ce": 0.19, "kd": 0.2, "val_loss": 1.8, "val_accuracy": 0.75},
                    {"ce": 0.18, "kd": 0.1, "val_loss": 1.75, "val_accuracy": 0.78},
                ],
            ),
        ],
    )
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    curves = accuracy.read_curves([run_dir])
    assert curves["student_kd_ls"]["ce_weight"] == pytest.approx(0.1)  # 1 - alpha
    lines = accuracy.findings(table, 2, None, curves)
    fsp = next(line for line in lines if line.startswith("Why FSP"))
    assert "(-0.50 ± 0.00 points)" in fsp
    assert "its FSP phase (3 epochs, mean of 1 seed) took the FSP loss down from 300 to 100" in fsp
    assert "still falling in its last epoch (from 150)" in fsp
    assert "training cross-entropy ends at 0.62 against 0.60 alone" in fsp
    assert "about as well as alone; the curves show no clear cause." in fsp
    ls = next(line for line in lines if line.startswith("Why KD + logit"))
    assert "(+0.00 ± 0.00 points, within the seeds' spread)" in ls
    assert "its soft term is 0.56× the CE term (plain KD's: 50×)" in ls  # 0.1 / 0.18, 2.5 / 0.05
    assert (
        "ends at 1.80 against 0.60 alone (validation loss 1.75 against 0.50), 1.90 at epoch 2" in ls
    )
    assert "validation accuracy reaches 78.0% (80.0% alone)" in ls
    assert "went down from 0.40 to 0.10" in ls
    assert "here T = 4, alpha = 0.9" in ls


def test_the_split_between_soft_label_and_feature_methods_is_said_when_the_table_shows_it(
    tmp_path: Path,
) -> None:
    soft = {"student_kd": 0.82, "student_fitnets": 0.83, "student_dkd": 0.825}
    soft |= {"student_dist": 0.85, "student_takd": 0.83}
    features = {"student_fsp": 0.79, "student_at": 0.77, "student_crd": 0.785}
    features |= {"student_rkd": 0.80, "student_pkt": 0.805}
    table = why_table(tmp_path, soft | features | {"student_kd_ls": 0.795})
    (split,) = [x for x in accuracy.findings(table, 2) if x.startswith("The methods on one")]
    assert "(KD, FitNets' second phase, DKD, DIST, TAKD) gain +2.00 to +5.00 points" in split
    assert "(FSP, AT, CRD, RKD, PKT) -3.00 to +0.50" in split
    assert "z-scored logits: -0.50)" in split
