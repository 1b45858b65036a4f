"""Experiment trackers (train.log_with): TensorBoard for real, event files read back; MLflow and
W&B (offline) when installed."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_RECIPE

from distill.cli import main
from distill.errors import ConfigError
from distill.recipe import parse_recipe
from distill.tracking import TRACKERS, Tracking, flatten_config


def recipe(tmp_path: Path, trackers: list[str]) -> Path:
    """Two stages (teacher, then KD) of two epochs each, logging to ``trackers``."""
    raw: dict[str, Any] = copy.deepcopy(TINY_RECIPE)
    raw["data"]["subset"] = 200
    raw["stages"] = [raw["stages"][0], raw["stages"][2]]
    raw["models"].pop("student")
    raw["train"]["log_with"] = trackers
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run(tmp_path: Path, trackers: list[str], capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "run"
    assert main(["run", str(recipe(tmp_path, trackers)), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in trackers:
        assert f"tracker logs: {name}: {out / 'logs'}" in printed
    return out


def epochs(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_tensorboard_events_are_written_and_read_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = run(tmp_path, ["tensorboard"], capsys)
    events = EventAccumulator(str(out / "logs" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    # One step per epoch of the whole run: the teacher's epochs 1-2, then KD's 3-4.
    lines = epochs(out)
    assert [(r["stage"], r["epoch"]) for r in lines] == [
        ("teacher", 1),
        ("teacher", 2),
        ("student_kd", 1),
        ("student_kd", 2),
    ]
    for step, line in enumerate(lines, start=1):
        stage, phase, model = line["stage"], line["phase"], line["model"]
        for part, value in line["train"].items():
            assert (step, pytest.approx(value)) in series(f"train/{stage}/{phase}/{part}")
        assert (step, pytest.approx(line["val_accuracy"])) in series(f"val/{model}/accuracy")
        assert (step, pytest.approx(line["lr"])) in series(f"lr/{stage}/{phase}")
    assert {"train/student_kd/kd/kd", "train/student_kd/kd/ce"} <= scalars
    # The end: final metrics from summary.json and the plots as images, at the last step.
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    final = summary["models"]["student_kd"]["val_accuracy"]
    assert series("final/student_kd/val_accuracy") == [(4, pytest.approx(final))]
    images = {tag: events.Images(tag)[0] for tag in events.Tags()["images"]}
    assert set(images) == {f"plots/{p.stem}" for p in out.glob("*.png")} != set()
    assert all(image.step == 4 and image.width > 100 for image in images.values())
    # The recipe: as text, and as hyperparameters (flattened keys).
    text = events.Tensors("recipe/text_summary")[0].tensor_proto.string_val[0].decode()
    assert yaml.safe_load(text) == yaml.safe_load((out / "recipe.yaml").read_text())
    (hparams,) = (out / "logs" / "tensorboard").glob("*/hparams.yml")
    stored = yaml.safe_load(hparams.read_text())
    assert stored["train.optimizer.lr"] == 0.05 and stored["stages.1.method"] == "kd"


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mlflow", "sqlalchemy", "alembic")),
    reason="mlflow (with its SQLite store: sqlalchemy, alembic) is not installed",
)
def test_mlflow_logs_to_a_local_store_in_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    out = run(tmp_path, ["mlflow"], capsys)
    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'logs' / 'mlflow.db').resolve()}")
    (found,) = client.search_runs([client.get_experiment_by_name("distill").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["train.optimizer.lr"] == "0.05"
    history = client.get_metric_history(found.info.run_id, "val/student_kd/accuracy")
    expected = [r["val_accuracy"] for r in epochs(out) if r["model"] == "student_kd"]
    assert [(m.step, m.value) for m in history] == [(3, expected[0]), (4, expected[1])]
    plots = {a.path for a in client.list_artifacts(found.info.run_id, "plots")}
    assert plots == {f"plots/{p.name}" for p in out.glob("*.png")}
    assert (out / "logs" / "mlflow-artifacts").is_dir()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_runs_offline_in_the_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = run(tmp_path, ["wandb"], capsys)
    (folder,) = (out / "logs" / "wandb").glob("offline-run-*")
    (records,) = folder.glob("run-*.wandb")
    data = records.read_bytes()
    for key in (b"val/student_kd/accuracy", b"train/student_kd/kd/kd", b"train.optimizer.lr"):
        assert key in data, key
    images = {p.name.split("_4_")[0] for p in folder.glob("files/media/images/plots/*.png")}
    assert images == {p.stem for p in out.glob("*.png")}


def test_flatten_config_gives_dotted_scalar_keys() -> None:
    raw = {"a": {"b": 1, "c": [0.9, "x"], "d": None, "e": [], "f": True}, "g": "s"}
    assert flatten_config(raw) == {
        "a.b": 1,
        "a.c.0": 0.9,
        "a.c.1": "x",
        "a.d": "null",
        "a.e": "[]",
        "a.f": True,
        "g": "s",
    }


# -- bad input -------------------------------------------------------------------------------


def test_unknown_tracker_is_refused_with_the_closest_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = recipe(tmp_path, ["tensorbord"])
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "distill: error: train.log_with: unknown tracker 'tensorbord' (did you mean "
        "'tensorboard'?); known trackers: tensorboard, mlflow, wandb, got ['tensorbord']"
    )
    assert not (tmp_path / "run").exists()


def test_tracker_not_installed_names_the_package_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TRACKERS["wandb"], "module", "wandb_not_installed_here")
    path = recipe(tmp_path, ["wandb"])
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "distill: error: train.log_with: tracker 'wandb' needs the wandb package, which is "
        "not installed: pip install wandb"
    )
    assert not (tmp_path / "run").exists()


def test_a_tracker_named_twice_is_refused() -> None:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["train"]["log_with"] = ["tensorboard", "tensorboard"]
    with pytest.raises(ConfigError, match="tracker 'tensorboard' is named twice"):
        parse_recipe(raw)


def test_no_trackers_log_nothing(tmp_path: Path) -> None:
    tracking = Tracking([])
    tracking.start(tmp_path, {}, print)
    tracking.log_epoch("s", "p", {"epoch": 1, "train": {"loss": 1.0}}, {})
    tracking.finish({"stages": [], "models": {}}, tmp_path)
    assert tracking.where() == [] and not (tmp_path / "logs").exists()
