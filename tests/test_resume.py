"""Recovering a run: per-stage resume after the recipe was fixed, metrics rebuilt after a crash,
damaged checkpoints, other data, a full disk, and models that are never saved with NaN."""

from __future__ import annotations

import copy
import errno
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _weights import assert_same_weights, final_weights

import distill.files
from distill import Supervised
from distill.cli import main
from distill.config import TrainConfig
from distill.data import DATASETS, RawData, register_dataset
from distill.errors import ConfigError, NonFiniteLossError
from distill.files import safe_load
from distill.models import create, save_model
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.training import Trainer


class Crash(RuntimeError):
    pass


def run(raw: dict, out: Path, **kw: Any) -> dict:
    return Pipeline(parse_recipe(raw), out, progress=False, **kw).run()


def metric_lines(out: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl`` without their wall times (which no two runs share)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "seconds"} for line in lines]


def crash_in_metrics(monkeypatch: pytest.MonkeyPatch, at: int, cut: bool) -> None:
    """Make the ``at``-th write of metric lines crash (after writing half of it if ``cut``)."""
    original = Pipeline._write_metric_lines
    calls = {"n": 0}

    def write(self: Pipeline, lines: list[str]) -> None:
        calls["n"] += 1
        if calls["n"] != at:
            return original(self, lines)
        if cut:
            text = "\n".join(lines) + "\n"
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(text[: len(text) // 2])
        else:
            original(self, lines)
        raise Crash

    monkeypatch.setattr(Pipeline, "_write_metric_lines", write)


@pytest.fixture
def straight(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: dict) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    run(tiny_recipe, out)
    return out


def test_the_same_seed_twice_gives_identical_weights(
    tmp_path: Path, tiny_recipe: dict, straight: Path
) -> None:
    again = run(tiny_recipe, tmp_path / "again")
    assert_same_weights(final_weights(straight), final_weights(tmp_path / "again"))
    first = json.loads((straight / "summary.json").read_text())
    assert {n: m["val_accuracy"] for n, m in first["models"].items()} == {
        n: m["val_accuracy"] for n, m in again["models"].items()
    }
    assert metric_lines(straight) == metric_lines(tmp_path / "again")


def test_after_fixing_a_diverging_stage_resume_keeps_the_stages_before_it(
    tmp_path: Path, tiny_recipe: dict, straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = copy.deepcopy(tiny_recipe)
    broken["stages"][2]["optimizer"] = {"lr": 1.0e6}
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"\[student_kd\] kd: the loss is nan"):
        run(broken, out)
    assert not (out / "checkpoints/student_kd.pt").exists()
    before = {n: (out / f"checkpoints/{n}.pt").read_bytes() for n in ("teacher", "student")}
    with pytest.raises(ConfigError, match="pass --resume"):
        run(tiny_recipe, out)
    capsys.readouterr()
    run(tiny_recipe, out, resume=True)  # the learning rate fixed
    log = capsys.readouterr().out
    assert "the recipe changed (stages.2.optimizer: {'lr': 1000000.0} -> None)" in log
    assert "trained again: student_kd; kept: teacher, student" in log
    assert "[teacher] train: already finished" in log and "[student] train: already" in log
    for name, data in before.items():
        assert torch.equal(
            torch.load(out / f"checkpoints/{name}.pt", weights_only=True)["state_dict"][
                "head.fc.weight"
            ],
            torch.load(__import__("io").BytesIO(data), weights_only=True)["state_dict"][
                "head.fc.weight"
            ],
        )
    assert_same_weights(final_weights(straight), final_weights(out))
    assert metric_lines(out) == metric_lines(straight)


def test_a_changed_teacher_stage_trains_its_pupils_again_but_not_the_student_alone(
    tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(tiny_recipe, out)
    tiny_recipe["stages"][0]["epochs"] = 1
    capsys.readouterr()
    run(tiny_recipe, out, resume=True)
    assert "trained again: teacher, student_kd; kept: student" in capsys.readouterr().out
    run(tiny_recipe, tmp_path / "fresh")
    assert_same_weights(final_weights(tmp_path / "fresh"), final_weights(out))
    assert metric_lines(out) == metric_lines(tmp_path / "fresh")


def test_a_metrics_line_cut_by_a_crash_is_rebuilt(
    tmp_path: Path, tiny_recipe: dict, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    crash_in_metrics(monkeypatch, at=5, cut=True)  # the KD stage's first epoch
    with pytest.raises(Crash):
        run(tiny_recipe, out)
    monkeypatch.undo()
    assert not (out / "metrics.jsonl").read_text().endswith("\n"), "a line was cut"
    run(tiny_recipe, out, resume=True)
    assert metric_lines(out) == metric_lines(straight)
    assert_same_weights(final_weights(straight), final_weights(out))


def test_damaged_metrics_are_rebuilt_on_resume(
    tmp_path: Path, tiny_recipe: dict, straight: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    crash_in_metrics(monkeypatch, at=3, cut=False)
    with pytest.raises(Crash):
        run(tiny_recipe, out)
    monkeypatch.undo()
    (out / "metrics.jsonl").write_bytes(b"\xff\xfe not json\n[1, 2]\n")
    run(tiny_recipe, out, resume=True)
    assert metric_lines(out) == metric_lines(straight)


def test_unreadable_epoch_checkpoints_restart_the_phase_without_duplicate_metrics(
    tmp_path: Path,
    tiny_recipe: dict,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    crash_in_metrics(monkeypatch, at=5, cut=False)  # after the KD stage's first epoch
    with pytest.raises(Crash):
        run(tiny_recipe, out)
    monkeypatch.undo()
    epochs = sorted((out / "checkpoints/student_kd/kd").glob("epoch_*.pt"))
    assert epochs
    for path in epochs:
        path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    run(tiny_recipe, out, resume=True)
    assert "restarting [student_kd] kd from epoch 1" in capsys.readouterr().out
    lines = metric_lines(out)
    keys = [(r["stage"], r["phase"], r["epoch"], r["model"]) for r in lines]
    assert len(keys) == len(set(keys)) == 6
    assert lines == metric_lines(straight)
    assert_same_weights(final_weights(straight), final_weights(out))


def test_a_damaged_final_pt_trains_its_phase_again(
    tmp_path: Path, tiny_recipe: dict, straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    run(tiny_recipe, out)
    (out / "checkpoints/teacher/train/final.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    run(tiny_recipe, out, resume=True)
    log = capsys.readouterr().out
    assert "final.pt cannot be used" in log and "training the phase again" in log
    assert_same_weights(final_weights(straight), final_weights(out))
    assert metric_lines(out) == metric_lines(straight)


def test_a_phase_folder_that_is_a_file_is_named(
    tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 0
    phase = out / "checkpoints/teacher/train"
    for path in phase.iterdir():
        path.unlink()
    phase.rmdir()
    phase.write_text("in the way")
    capsys.readouterr()
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "train should be the folder of a phase's checkpoints but is a file" in err


@pytest.fixture
def two_datasets():  # noqa: ANN201
    """A dataset whose images depend on its folder (``dir``)."""

    @register_dataset("test-by-dir")
    def by_dir(dir=None):  # noqa: A002, ANN001, ANN202
        generator = torch.Generator().manual_seed(0 if dir in (None, "a") else 1)
        x = torch.rand(80, 1, 8, 8, generator=generator)
        return RawData(train_x=x, train_y=torch.arange(80) % 10, num_classes=10)

    yield
    DATASETS.pop("test-by-dir", None)


def test_resume_on_other_data_is_refused(
    tmp_path: Path, tiny_recipe: dict, two_datasets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_recipe["data"] = {"name": "test-by-dir", "dir": "a", "batch_size": 32}
    out = tmp_path / "run"
    crash_in_metrics(monkeypatch, at=3, cut=False)
    with pytest.raises(Crash):
        run(tiny_recipe, out)
    monkeypatch.undo()
    other = parse_recipe(tiny_recipe)
    other.data.dir = "b"  # as --data-dir does
    with pytest.raises(ConfigError, match="trained on other data than it is given now"):
        Pipeline(other, out, resume=True, progress=False).run()
    assert run(tiny_recipe, out, resume=True)["stages"][-1]["name"] == "student_kd"


@pytest.mark.parametrize("exists", [False, True])
def test_resume_of_a_folder_with_no_run_says_it_starts_one(
    tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture[str], exists: bool
) -> None:
    out = tmp_path / "run"
    if exists:
        out.mkdir()
    tiny_recipe["stages"] = tiny_recipe["stages"][:1]
    run(tiny_recipe, out, resume=True)
    assert "--resume: " in capsys.readouterr().out
    assert (out / "summary.json").is_file()


def test_a_full_disk_keeps_the_last_good_checkpoint(
    tmp_path: Path,
    tiny_recipe: dict,
    straight: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe))
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(obj, dict) and obj.get("format") and obj.get("epoch") == 2:
            f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(distill.files.torch, "save", save)
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "no space left on device while writing" in err
    assert "checkpoints/teacher/train/epoch_0002.pt" in err
    assert f"resume with: distill run {recipe} --out {out}" in err
    assert [p.name for p in (out / "checkpoints/teacher/train").iterdir()] == ["epoch_0001.pt"]
    assert safe_load(out / "checkpoints/teacher/train/epoch_0001.pt")["epoch"] == 1
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    assert_same_weights(final_weights(straight), final_weights(out))


class Poisoned(Supervised):
    """Writes NaN into its model's weights at the end of every epoch."""

    def epoch_end(self) -> None:
        super().epoch_end()
        with torch.no_grad():
            next(self.student.parameters()).fill_(math.nan)


def test_non_finite_weights_after_an_epoch_stop_before_its_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("cnn-2", num_classes=10, in_channels=1)
    data = [(torch.randn(1, 8, 8), torch.tensor(i % 10)) for i in range(32)]
    trainer = Trainer(
        TrainConfig(epochs=2), batch_size=16, progress=False, checkpoint_dir=tmp_path
    )
    with pytest.raises(NonFiniteLossError, match="after epoch 1, the trained weights: NaN"):
        trainer.fit(Poisoned(model), data, data, {"m": model})
    assert not list(tmp_path.iterdir()), "no checkpoint holds the NaN weights"


def test_a_non_finite_validation_loss_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distill.training.loop as loop

    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"accuracy": 0.1, "loss": math.inf})
    torch.manual_seed(0)
    model = create("cnn-2", num_classes=10, in_channels=1)
    data = [(torch.randn(1, 8, 8), torch.tensor(i % 10)) for i in range(32)]
    trainer = Trainer(
        TrainConfig(epochs=2), batch_size=16, progress=False, checkpoint_dir=tmp_path
    )
    with pytest.raises(NonFiniteLossError, match="validation metrics of 'm': NaN or infinite"):
        trainer.fit(Supervised(model), data, data, {"m": model})
    assert not list(tmp_path.iterdir())


def test_a_model_with_nan_weights_is_never_reported(tmp_path: Path, tiny_recipe: dict) -> None:
    nan_teacher = create("cnn-4", num_classes=10, in_channels=1)
    with torch.no_grad():
        for p in nan_teacher.parameters():
            p.fill_(math.nan)
    save_model(nan_teacher, tmp_path / "nan.pt")
    tiny_recipe["models"]["teacher"]["checkpoint"] = str(tmp_path / "nan.pt")
    tiny_recipe["stages"] = [tiny_recipe["stages"][1]]  # the NaN teacher teaches nobody
    with pytest.raises(NonFiniteLossError, match="model 'teacher': its val metrics"):
        run(tiny_recipe, tmp_path / "run")
    assert not (tmp_path / "run/summary.json").exists()
