"""The bad-input catalogue: every case exits with code 2 and one line that names the problem,
the value and the fix, without a traceback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill.cli import main
from distill.data import DATASETS, RawData, register_dataset
from distill.models import create, save_model


@pytest.fixture(scope="module", autouse=True)
def odd_datasets():  # noqa: ANN201
    """Registered datasets with something wrong in them."""

    @register_dataset("test-bad-labels")
    def bad_labels(dir=None):  # noqa: A002, ANN001, ANN202
        x = torch.rand(40, 1, 8, 8)
        y = torch.arange(40) % 10
        y[7] = 12
        return RawData(train_x=x, train_y=y, num_classes=10)

    @register_dataset("test-empty")
    def empty(dir=None):  # noqa: A002, ANN001, ANN202
        return RawData(
            train_x=torch.rand(0, 1, 8, 8), train_y=torch.zeros(0, dtype=torch.long), num_classes=10
        )

    yield
    DATASETS.pop("test-bad-labels", None)
    DATASETS.pop("test-empty", None)


def setter(path: str, value: Any):  # noqa: ANN201
    def apply(raw: dict, tmp: Path) -> None:
        keys = path.split(".")
        node = raw
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = keys[-1]
        resolved = value(tmp) if callable(value) else value
        if isinstance(node, list):
            node[int(last)] = resolved
        else:
            node[last] = resolved

    return apply


def checkpoint_file(kind: str):  # noqa: ANN201
    def make(tmp: Path) -> str:
        path = tmp / f"{kind}.pt"
        if kind == "truncated":
            model = create("cnn-4", num_classes=10, in_channels=1)
            save_model(model, path)
            path.write_bytes(path.read_bytes()[:300])
        elif kind == "other-arch":
            save_model(create("cnn-6", num_classes=10, in_channels=1), path)
        elif kind == "other-classes":
            save_model(create("cnn-4", num_classes=3, in_channels=1), path)
        elif kind == "not-a-checkpoint":
            path.write_text("hello")
        return str(path)

    return make


def teacher_from(kind: str):  # noqa: ANN201
    def apply(raw: dict, tmp: Path) -> None:
        raw["models"]["teacher"]["checkpoint"] = (
            str(tmp / "missing.pt") if kind == "missing" else checkpoint_file(kind)(tmp)
        )
        raw["stages"] = raw["stages"][1:]

    return apply


def drop_stage(index: int):  # noqa: ANN201
    def apply(raw: dict, tmp: Path) -> None:
        del raw["stages"][index]

    return apply


# case -> (how to break the recipe, extra CLI args, substrings the one-line message must hold)
CASES: dict[str, tuple[Any, list[str], list[str]]] = {
    "unknown top-level key": (
        setter("trian", {"epochs": 2}),
        [],
        ["trian", "did you mean 'train'"],
    ),
    "unknown stage key": (
        setter("stages.2.temprature", 2.0),
        [],
        ["stages.2.temprature", "did you mean 'temperature'"],
    ),
    "unknown data key": (setter("data.batchsize", 8), [], ["data.batchsize", "'batch_size'"]),
    "unknown optimizer key": (
        setter("train.optimizer.learning_rate", 0.1),
        [],
        ["train.optimizer.learning_rate", "allowed keys", "lr"],
    ),
    "unknown model": (
        setter("models.student.arch", "resnet21"),
        [],
        ["models.student.arch", "resnet21", "did you mean 'resnet20'"],
    ),
    "unknown stage method": (
        setter("stages.2.method", "distil"),
        [],
        ["stages.2.method", "'distil'", "allowed: train, kd"],
    ),
    "unknown dataset": (
        setter("data.name", "fashion_mnist"),
        [],
        ["data.name", "fashion_mnist", "fashion-mnist"],
    ),
    "unknown optimizer": (
        setter("train.optimizer.name", "lamb"),
        [],
        ["train.optimizer.name", "'lamb'", "'sgd'"],
    ),
    "unknown schedule": (
        setter("train.schedule.name", "linear"),
        [],
        ["train.schedule.name", "'linear'", "'cosine'"],
    ),
    "wrong type": (setter("train.epochs", "ten"), [], ["train.epochs", "integer", "'ten'"]),
    "models not a mapping": (setter("models", ["resnet20"]), [], ["models:", "arch"]),
    "temperature zero": (
        setter("stages.2.temperature", 0),
        [],
        ["stages.2.temperature", "greater than 0", "got 0"],
    ),
    "alpha outside [0, 1]": (
        setter("stages.2.alpha", 2),
        [],
        ["stages.2.alpha", "in [0, 1]", "got 2"],
    ),
    "epochs zero in a stage": (setter("stages.1.epochs", 0), [], ["stages.1.epochs", "got 0"]),
    "negative batch size": (setter("data.batch_size", -8), [], ["data.batch_size", "got -8"]),
    "val_fraction out of range": (
        setter("data.val_fraction", 1.5),
        [],
        ["data.val_fraction", "got 1.5"],
    ),
    "teacher nobody trains": (
        drop_stage(0),
        [],
        ["stages.1", "'teacher'", "no earlier stage trains it", "models.teacher.checkpoint"],
    ),
    "student as its own teacher": (
        setter("stages.2.student", "teacher"),
        [],
        ["'teacher'", "teach itself"],
    ),
    "undefined model name": (
        setter("stages.2.student", "studnet"),
        [],
        ["stages.2.student", "'studnet'", "did you mean 'student'"],
    ),
    "subset larger than the data": (setter("data.subset", 5000), [], ["5000", "1797"]),
    "empty dataset": (setter("data", {"name": "test-empty"}), [], ["test-empty", "no training"]),
    "labels outside [0, num_classes)": (
        setter("data", {"name": "test-bad-labels"}),
        [],
        ["12", "num_classes"],
    ),
    "missing data directory": (
        setter("data", {"name": "fashion-mnist", "dir": "/no/such/dir"}),
        [],
        ["/no/such/dir", "apt-get install dataset-fashion-mnist"],
    ),
    "missing checkpoint": (
        teacher_from("missing"),
        [],
        ["models.teacher.checkpoint", "missing.pt", "not found"],
    ),
    "truncated checkpoint": (teacher_from("truncated"), [], ["truncated.pt", "truncated"]),
    "not a checkpoint": (teacher_from("not-a-checkpoint"), [], ["not-a-checkpoint.pt"]),
    "checkpoint of another architecture": (
        teacher_from("other-arch"),
        [],
        ["other-arch.pt", "'cnn-6'", "models.teacher.arch"],
    ),
    "teacher with another number of classes": (
        teacher_from("other-classes"),
        [],
        ["other-classes.pt", "3 classes", "10"],
    ),
    "unknown layer name": (
        lambda raw, tmp: raw["stages"].append(
            {
                "method": "fitnets",
                "teacher": "teacher",
                "student": "student_kd",
                "hint_layer": "stages.9",
                "guided_layer": "stages.1",
            }
        ),
        [],
        ["stages.9", "stages.1"],
    ),
    "shapes no adapter can match": (
        lambda raw, tmp: raw["stages"].append(
            {
                "method": "fitnets",
                "teacher": "teacher",
                "student": "student_kd",
                "hint_layer": "head.fc",
                "guided_layer": "stages.1",
            }
        ),
        [],
        ["10", "32"],
    ),
    "FSP pairs with mismatched channels": (
        lambda raw, tmp: raw["stages"].append(
            {
                "method": "fsp",
                "teacher": "teacher",
                "student": "student_kd",
                "pairs": [{"student": ["stem", "stages.1"], "teacher": ["stem", "stages.1"]}],
            }
        ),
        [],
        ["student_adapters"],
    ),
    "output directory not writable": (None, ["--out", "{tmp}/afile/run"], ["afile", "--out"]),
    "malformed --set": (None, ["--set", "train.epochs"], ["--set", "KEY=VALUE"]),
    "--set into a missing list item": (
        None,
        ["--set", "stages.7.alpha=0.5"],
        ["stages.7", "index from 0 to 2"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(
    case: str, tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture
) -> None:
    breaker, extra, expected = CASES[case]
    raw = copy.deepcopy(tiny_recipe)
    if breaker is not None:
        breaker(raw, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "afile").write_text("a file, not a directory")
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    code = main(["run", str(recipe), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert "Traceback" not in err


def test_recipe_file_not_found(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err


def test_recipe_is_not_a_mapping(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert main(["run", str(path)]) == 2
    assert "must be a mapping" in capsys.readouterr().err


def test_yaml_cannot_run_code(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    assert main(["run", str(path)]) == 2
    assert not (tmp_path / "pwned").exists()
    assert "malformed YAML" in capsys.readouterr().err


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture, tmp_path: Path, tiny_recipe: dict
) -> None:
    tiny_recipe["stages"][2]["alpha"] = 3
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_resume_without_out(
    capsys: pytest.CaptureFixture, tmp_path: Path, tiny_recipe: dict
) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    assert main(["run", str(path), "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
