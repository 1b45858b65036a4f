"""The bad-input catalogue: every case exits with code 2 and one line that names the problem,
the value and the fix, without a traceback, before anything trains and without writing
outside ``--out``."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import time
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
        elif kind == "code":
            torch.save({"state_dict": RunsCode()}, path)
        return str(path)

    return make


class RunsCode:
    """Pickled, it asks to call ``os.system`` when loaded."""

    def __reduce__(self):  # noqa: ANN204
        return (os.system, ("echo pickled code ran > pwned",))


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


def rename_model(old: str, new: str):  # noqa: ANN201
    """Model ``old`` renamed to ``new`` everywhere."""

    def apply(raw: dict, tmp: Path) -> None:
        raw["models"] = {new if k == old else k: v for k, v in raw["models"].items()}
        for stage in raw["stages"]:
            for key, value in stage.items():
                if value == old:
                    stage[key] = new

    return apply


def add_stage(stage: dict[str, Any]):  # noqa: ANN201
    def apply(raw: dict, tmp: Path) -> None:
        raw["stages"].append(copy.deepcopy(stage))

    return apply


def text(recipe: str):  # noqa: ANN201
    """The recipe file holds ``recipe`` as written (YAML that safe_dump cannot write)."""
    return lambda raw, tmp: recipe


def bomb() -> str:
    """Nine aliases, each nine of the one before: 9**9 values when expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def in_out(make: Any):  # noqa: ANN201
    """Something left in the --out folder before the run (``make(out)``)."""

    def apply(raw: dict, tmp: Path) -> None:
        out = tmp / "out"
        out.mkdir()
        make(out)

    return apply


def held_lock(out: Path) -> None:
    # A process that outlives the test case holds the folder's lock.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    HOLDERS.append(holder)
    (out / ".distill.lock").write_text(f"{holder.pid} {os.uname().nodename}\n")


HOLDERS: list[subprocess.Popen] = []


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
    # Names: they become file names under --out, so none may leave it.
    "model named by an absolute path": (
        rename_model("student", "/tmp/elsewhere/student"),
        [],
        ["models:", "'/tmp/elsewhere/student'", "ASCII letters, digits, '_' and '-'"],
    ),
    "stage named with ..": (
        setter("stages.1.name", "../../outside"),
        [],
        ["stages.1.name", "'../../outside'", "names files in the run folder"],
    ),
    "model named ..": (rename_model("student", ".."), [], ["models:", "'..'"]),
    "stage named .": (setter("stages.0.name", "."), [], ["stages.0.name", "got '.'"]),
    "empty model name": (rename_model("student", ""), [], ["models:", "''"]),
    "name too long for a file system": (
        rename_model("student", "s" * 300),
        [],
        ["models:", "at most 64 characters", "got 300"],
    ),
    "model name that reads as an option": (rename_model("student", "-x"), [], ["'-x'"]),
    # Numbers torch or NumPy would choke on.
    "seed beyond int64": (setter("seed", 10**29), [], ["seed:", "too large", "2**63 - 1"]),
    "batch size beyond int64": (
        setter("data.batch_size", 2**70),
        [],
        ["data.batch_size", "too large"],
    ),
    "infinite learning rate": (
        setter("train.optimizer.lr", float("inf")),
        [],
        ["train.optimizer.lr", "finite", "inf"],
    ),
    "NaN temperature": (
        setter("stages.2.temperature", float("nan")),
        [],
        ["stages.2.temperature", "nan"],
    ),
    # Settings torch refuses in combination.
    "nesterov without momentum": (
        setter("train.optimizer", {"name": "sgd", "nesterov": True, "momentum": 0}),
        [],
        ["train.optimizer:", "nesterov: true needs", "momentum"],
    ),
    "nesterov with adam": (
        setter("stages.1.optimizer", {"name": "adam", "nesterov": True}),
        [],
        ["stages.1.optimizer:", "'adam'"],
    ),
    "adam beta of 1": (
        setter("train.optimizer", {"name": "adam", "betas": [1.0, 0.999]}),
        [],
        ["train.optimizer.betas", "[0, 1)", "[1.0, 0.999]"],
    ),
    "negative adam beta": (
        setter("train.optimizer", {"name": "adamw", "betas": [0.9, -0.1]}),
        [],
        ["train.optimizer.betas", "-0.1"],
    ),
    # Rules over several fields: the section is named, not ": ".
    "warm-up longer than the run": (
        setter("train.schedule.warmup_epochs", 5),
        [],
        ["error: train: schedule.warmup_epochs (5.0) must not exceed epochs (2)"],
    ),
    "warm-up longer than a stage": (
        lambda raw, tmp: raw["stages"][1].update(epochs=1, schedule={"warmup_epochs": 2}),
        [],
        ["error: stages.1: schedule.warmup_epochs (2.0) must not exceed epochs (1)"],
    ),
    "FSP pair with an unknown key": (
        add_stage(
            {
                "method": "fsp",
                "teacher": "teacher",
                "student": "student_kd",
                "pairs": [{"student": ["stem", "stages.1"], "teacher": ["stem"], "wieght": 1}],
            }
        ),
        [],
        ["stages.3.pairs.0.wieght", "did you mean 'weight'", "allowed keys: student, teacher"],
    ),
    "a stage's train that is not a mapping": (
        setter("stages.1.train", [1, 2]),
        [],
        ["stages.1.train", "must be a mapping", "[1, 2]"],
    ),
    # Errors that would otherwise appear only after the earlier stages trained.
    "DML updated one member after another with accumulation": (
        add_stage(
            {
                "method": "dml",
                "cohort": ["student", "student_kd"],
                "update": "sequential",
                "grad_accum_steps": 2,
            }
        ),
        [],
        ["stages.3", "grad_accum_steps", "must be 1", "one after another", "got 2"],
    ),
    "cache_topk as large as the classes": (
        lambda raw, tmp: raw["stages"][2].update(cache="teacher", cache_topk=10),
        [],
        ["stages.2", "cache_topk", "between 1 and 9", "got 10"],
    ),
    "standardize on an FSP stage that fine-tunes on cross-entropy": (
        add_stage(
            {
                "method": "fsp",
                "teacher": "teacher",
                "student": "student",
                "pairs": [{"student": ["stem", "stages.0"], "teacher": ["stem", "stages.0"]}],
                "standardize": True,
            }
        ),
        [],
        ["stages.3", "standardize", "finetune: ce", "set finetune: kd"],
    ),
    "diverging first stage": (
        setter("stages.0.optimizer", {"lr": 1.0e6}),
        [],
        ["[teacher] train", "the loss is nan", "learning rate", "resume with: distill run"],
    ),
    "a checkpoint that would run code": (
        teacher_from("code"),
        [],
        ["code.pt", "refused: the file would need to run code to load", "system"],
    ),
    # YAML.
    "duplicate top-level key": (
        text("seed: 0\nseed: 1\n"),
        [],
        ["duplicate key 'seed' at lines 1 and 2"],
    ),
    "duplicate key in a stage": (
        text(
            "models: {a: {arch: cnn-2}}\n"
            "stages:\n"
            "  - method: train\n"
            "    model: a\n"
            "    epochs: 1\n"
            "    epochs: 2\n"
        ),
        [],
        ["duplicate key 'epochs' at lines 5 and 6"],
    ),
    "alias bomb": (text(bomb()), [], ["expands to more than 100,000 values", "aliases"]),
    "alias that contains itself": (text("seed: &a [*a]\n"), [], ["alias refers to itself"]),
    "YAML nested 80 deep": (text("seed: " + "[" * 80 + "]" * 80 + "\n"), [], ["50 levels"]),
    "YAML nested 5000 deep": (text("seed: " + "[" * 5000 + "]" * 5000 + "\n"), [], ["levels"]),
    "unhashable key": (text("? [a, b]\n: 1\n"), [], ["malformed YAML", "unhashable key"]),
    "not UTF-8": (text("seed: 0\n# \udcff\n"), [], ["not a text file"]),
    "--set value that is not YAML": (
        None,
        ["--set", "train.epochs=[1"],
        ["--set 'train.epochs=[1'", "malformed YAML at line 1, column 3"],
    ),
    "--set value with a python tag": (
        None,
        ["--set", "seed=!!python/object/apply:os.system [ls]"],
        ["--set", "malformed YAML", "could not determine a constructor"],
    ),
    "--set value with a key twice": (
        None,
        ["--set", "train.optimizer={lr: 0.1, lr: 0.2}"],
        ["--set", "duplicate key 'lr'"],
    ),
    "--set a stage's train to a list": (
        None,
        ["--set", "stages.1.train=[1,2]"],
        ["stages.1.train", "must be a mapping"],
    ),
    "--set inside a value": (None, ["--set", "seed.x=1"], ["seed is a value, not a section"]),
    "--set a huge integer": (None, ["--set", "seed=" + "9" * 30], ["seed:", "too large"]),
    # The --out folder.
    "--out is a file": (None, ["--out", "{tmp}/afile"], ["--out", "afile", "not a folder"]),
    "--out holds other files": (
        in_out(lambda out: (out / "notes.txt").write_text("mine")),
        [],
        ["holds files that are not a distill run (notes.txt)", "new or empty folder"],
    ),
    "--out held by a running process": (
        in_out(held_lock),
        [],
        ["in use by another distill run (pid", "wait for it to end"],
    ),
    "damaged progress.json": (
        in_out(lambda out: (out / "progress.json").write_text('{"format": "distill-prog')),
        ["--resume"],
        ["progress.json is damaged", "restore the file, or move the folder away"],
    ),
    "progress.json of another kind": (
        in_out(lambda out: (out / "progress.json").write_text("[1, 2]")),
        ["--resume"],
        ["progress.json is damaged (not a distill-progress/1 file)"],
    ),
    "progress.json that is a folder": (
        in_out(lambda out: (out / "progress.json").mkdir()),
        ["--resume"],
        ["progress.json is damaged"],
    ),
    "--out name too long for the file system": (
        None,
        ["--out", "{tmp}/" + "o" * 300],
        ["--out", "File name too long"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(
    case: str, tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture
) -> None:
    breaker, extra, expected = CASES[case]
    raw = copy.deepcopy(tiny_recipe)
    written = breaker(raw, tmp_path) if breaker is not None else None
    recipe = tmp_path / "recipe.yaml"
    if isinstance(written, str):
        recipe.write_text(written, encoding="utf-8", errors="surrogateescape")
    else:
        recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "afile").write_text("a file, not a directory")
    before = {p for p in tmp_path.parent.iterdir()}
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    cwd = Path.cwd()
    os.chdir(tmp_path)  # a pickle that ran code would write here
    try:
        started = time.perf_counter()
        code = main(["run", str(recipe), "--quiet", *args])
        seconds = time.perf_counter() - started
    finally:
        os.chdir(cwd)
        for holder in HOLDERS:
            holder.kill()
            holder.wait()
        HOLDERS.clear()
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    for expected_text in expected:
        assert expected_text in err, f"{expected_text!r} not in {err!r}"
    assert "Traceback" not in err
    assert seconds < 15, "caught early, not after training"
    trained = list((tmp_path / "out" / "checkpoints").glob("*.pt"))
    assert not trained, f"nothing trains before the error is found: {trained}"
    assert {p for p in tmp_path.parent.iterdir()} == before, "nothing written beside tmp_path"
    assert not (tmp_path / "pwned").exists()


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


def test_an_alias_bomb_fails_in_well_under_a_second() -> None:
    from distill.errors import ConfigError
    from distill.recipe import load_yaml

    started = time.perf_counter()
    with pytest.raises(ConfigError, match="more than 100,000 values"):
        load_yaml(bomb())
    assert time.perf_counter() - started < 0.5


def test_the_nan_stop_message_comes_without_torch_warnings() -> None:
    import warnings
    from types import SimpleNamespace

    from distill.config import TrainConfig
    from distill.errors import NonFiniteLossError
    from distill.training.signals import NonFiniteGuard

    weight = torch.ones((), requires_grad=True)
    out = SimpleNamespace(loss=weight * math.nan, parts={"ce": weight * math.nan})
    guard = NonFiniteGuard(TrainConfig(), lambda: None, "[s] train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would fail here instead of the stop
        with pytest.raises(NonFiniteLossError) as exc:
            guard.ok(out, 0, 5)
    assert "\n" not in str(exc.value) and "the loss is nan at epoch 1, step 6" in str(exc.value)


# The other commands: the same rule (one line, exit 2).
COMMAND_CASES: dict[str, tuple[list[str], list[str]]] = {
    "layers: an input size of gigabytes": (
        ["layers", "resnet20", "--input-size", "100000"],
        ["--input-size must be from 1 to 4096", "got 100000"],
    ),
    "layers: no channels": (["layers", "cnn-2", "--in-channels", "0"], ["--in-channels"]),
    "layers: unknown model": (["layers", "resnet21"], ["'resnet21'", "did you mean 'resnet20'"]),
    "export: not a run": (
        ["export", "{tmp}/nothing", "--model", "x", "--format", "onnx"],
        ["nothing: not a distill run directory"],
    ),
    "demo: unknown method": (["demo", "--methods", "kdd"], ["--methods", "did you mean 'kd'"]),
}


@pytest.mark.parametrize("case", list(COMMAND_CASES))
def test_bad_command(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = COMMAND_CASES[case]
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill: error: ") and err.count("\n") == 1, err
    for expected_text in expected:
        assert expected_text in err, f"{expected_text!r} not in {err!r}"


def test_a_closed_output_pipe_ends_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ClosedPipe:  # `distill models | head`: the reader has gone
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err == "distill: error: the output was closed before it was all written\n"


def test_sync_batchnorm_over_cpu_processes_is_refused_before_training() -> None:
    from types import SimpleNamespace

    from distill.config import TrainConfig
    from distill.errors import ConfigError
    from distill.training import check_processes

    config = TrainConfig(sync_batchnorm=True)
    cpus = SimpleNamespace(num_processes=2, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"stages.1.sync_batchnorm: true needs GPUs .* set it"):
        check_processes(config, cpus, "stages.1")
    check_processes(config, SimpleNamespace(num_processes=1, device=torch.device("cpu")))
    check_processes(TrainConfig(), cpus)


# The Python API: a clear ValueError, never a NaN loss or a traceback from deep inside torch.
def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    first, second = (create("cnn-2", num_classes=10, in_channels=1) for _ in range(2))
    return first, second


def _api_cases() -> dict[str, tuple[Any, str]]:
    import distill
    from distill import losses

    empty, none = torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    logits = torch.randn(4, 10)
    maps = torch.zeros(0, 4, 5, 5)
    return {
        "kd_loss on an empty batch": (lambda: losses.kd_loss(empty, empty), "empty"),
        "divergence on an empty batch": (
            lambda: losses.divergence(empty, empty, "jsd"),
            "empty",
        ),
        "dkd_loss on an empty batch": (lambda: losses.dkd_loss(empty, empty, none), "empty"),
        "dist_loss on an empty batch": (lambda: losses.dist_loss(empty, empty), "empty"),
        "mutual_loss on an empty batch": (
            lambda: losses.mutual_loss([empty, empty], none),
            "empty",
        ),
        "hint_loss on an empty batch": (lambda: losses.hint_loss(maps, maps), "empty"),
        "at_loss on an empty batch": (lambda: losses.at_loss([maps], [maps]), "empty"),
        "fsp_loss on an empty batch": (
            lambda: losses.fsp_loss([torch.zeros(0, 4, 4)], [torch.zeros(0, 4, 4)]),
            "empty",
        ),
        "crd_nce_loss on an empty batch": (
            lambda: losses.crd_nce_loss(torch.zeros(0, 5), 100),
            "empty",
        ),
        "KD on an empty batch": (
            lambda: distill.KD(*_models())(x[:0], y[:0]),
            "the batch is empty",
        ),
        "Supervised on an empty batch": (
            lambda: distill.Supervised(_models()[0])(x[:0], y[:0]),
            "the batch is empty",
        ),
        "KD with a NaN temperature": (
            lambda: distill.KD(*_models(), temperature=float("nan")),
            "temperature must be a finite number greater than 0, got nan",
        ),
        "kd_loss with an infinite temperature": (
            lambda: losses.kd_loss(logits, logits, float("inf")),
            "got inf",
        ),
        "divergence with a NaN temperature": (
            lambda: losses.divergence(logits, logits, "forward_kl", temperature=float("nan")),
            "got nan",
        ),
        "DML with an infinite temperature": (
            lambda: distill.DML(list(_models()), temperature=float("inf")),
            "got inf",
        ),
        "TAKD with a NaN temperature": (
            lambda: distill.TAKD(list(_models()), temperature=float("nan")),
            "nan",
        ),
        "a mask of halves": (
            lambda: losses.kd_loss(logits, logits, mask=torch.full((4,), 0.5)),
            "mask must be boolean or hold only 0 and 1, got torch.float32 values such as 0.5",
        ),
        "a mask holding 2": (
            lambda: losses.divergence(logits, logits, "tvd", mask=torch.tensor([0, 1, 2, 1])),
            "such as 2",
        ),
        "a mask of another shape": (
            lambda: losses.mutual_loss([logits, logits], y, mask=torch.ones(5, dtype=torch.bool)),
            "mask shape (5,)",
        ),
        "integer images to KD": (
            lambda: distill.KD(*_models())(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), y),
            "holds torch.uint8 images, but models take floating-point inputs (torch.float32",
        ),
        "integer images to evaluate": (
            lambda: distill.evaluate(
                _models()[0], [(torch.zeros(1, 8, 8, dtype=torch.int64), 0)] * 4
            ),
            "holds torch.int64 images",
        ),
    }


@pytest.mark.parametrize("case", list(_api_cases()))
def test_bad_python_api_input(case: str) -> None:
    call, expected = _api_cases()[case]
    with pytest.raises(ValueError) as exc:
        call()
    assert expected in str(exc.value), str(exc.value)
