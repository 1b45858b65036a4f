"""The distill command: demo, run, --set, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill.cli import main


def write_recipe(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(out),
            "--quiet",
            "--set",
            "data.subset=500",
            "--set",
            "data.batch_size=32",
            "--set",
            "train.epochs=3",
            "--set",
            "stages.0.epochs=3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "student_kd" in printed and "params" in printed and "val acc" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "student", "student_kd"]
    for m in summary["models"].values():
        assert m["val_accuracy"] > 0.2, "above chance (0.1)"
    assert summary["models"]["student"]["arch"] == summary["models"]["student_kd"]["arch"]
    for name in ["metrics.jsonl", "report.md", "val_accuracy.png", "final_accuracy.png"]:
        assert (out / name).is_file()


def test_run_with_set_overrides(tmp_path: Path, tiny_recipe: dict) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "train.epochs=1",
            "--set",
            "stages.2.temperature=2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][2]["temperature"] == 2
    assert all(stage["epochs"] == 1 for stage in summary["stages"])


BAD_CASES = {
    "unknown model": (["models", "student", "arch"], "resnet21", "resnet20"),
    "unknown stage method": (["stages", 2, "method"], "kdd", "allowed: train, kd"),
    "negative temperature": (["stages", 2, "temperature"], -1.0, "temperature"),
    "alpha above 1": (["stages", 2, "alpha"], 1.5, "alpha"),
    "alpha below 0": (["stages", 2, "alpha"], -0.5, "alpha"),
    "missing data directory": (
        ["data"],
        {"name": "fashion-mnist", "dir": "/nonexistent/fm"},
        "/nonexistent/fm",
    ),
    "unknown key": (["stages", 2, "temprature"], 2.0, "did you mean 'temperature'"),
    "teacher never trained": (["stages", 0, "model"], "student", "no earlier stage trains it"),
    "epochs zero": (["train", "epochs"], 0, "train.epochs"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_recipes_exit_2_with_one_line(
    case: str, tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture
) -> None:
    path, value, expected = BAD_CASES[case]
    node = tiny_recipe
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    recipe = write_recipe(tmp_path / "bad.yaml", tiny_recipe)
    code = main(["run", str(recipe), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert err.startswith("distill: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("models: {teacher: {arch: resnet20}\nstages: [\n")
    assert main(["run", str(recipe), "--quiet"]) == 2
    assert "malformed YAML at line" in capsys.readouterr().err


def test_process_exit_code_and_no_traceback(tmp_path: Path, tiny_recipe: dict) -> None:
    tiny_recipe["stages"][2]["temperature"] = -3
    recipe = write_recipe(tmp_path / "bad.yaml", tiny_recipe)
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "distill: error: stages.2.temperature: must be a finite number greater than 0, got -3"
    )


def test_models_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert "resnet20" in printed and "cnn-2" in printed


def test_demo_methods_offers_every_method_and_runs_the_new_ones(tmp_path: Path) -> None:
    """`distill demo --methods` knows every vision method, and a demo with the newer ones
    (DKD, DIST, RKD, PKT, CRD, AT) runs end to end on a tiny budget."""
    from distill.demo import demo_methods

    offered = set(demo_methods())
    assert {"kd", "fitnets", "fsp", "takd", "dml", "at", "dkd", "dist", "crd", "rkd",
            "pkt"} <= offered
    methods = "dkd,dist,rkd,pkt,crd,at"
    out = tmp_path / "demo"
    code = main(["demo", "--methods", methods, "--out", str(out), "--quiet",
                 "--set", "train.epochs=1", "--set", "data.subset=256",
                 "--set", "stages.0.epochs=1"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    for method in methods.split(","):
        entry = summary["models"][f"student_{method}"]
        assert entry["trained_by"] == f"student_{method}" and 0.0 < entry["val_accuracy"] <= 1.0
