"""Crash safety: SIGKILL at any moment, then --resume, ends with the same weights as an
uninterrupted run; SIGINT stops cleanly with a resumable checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _weights import assert_same_weights, final_weights

RUNNER = Path(__file__).with_name("_interrupt_runner.py")


def launch(point: str, n: int, recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        str(RUNNER),
        point,
        str(n),
        "--",
        "run",
        str(recipe),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def kill_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import TINY_RECIPE

    root = tmp_path_factory.mktemp("kill")
    recipe = root / "recipe.yaml"
    raw = json.loads(json.dumps(TINY_RECIPE))
    raw["data"]["subset"] = 120  # 96 training images: 3 batches of 32 per epoch
    recipe.write_text(yaml.safe_dump(raw))
    straight = root / "straight"
    proc = launch("none", 0, recipe, straight)
    assert proc.returncode == 0, proc.stderr
    return recipe, straight


# (point, n) with 3 steps per epoch and 2 epochs per stage: inside epoch 2 of stage 1, inside
# the KD stage, between epochs of stage 2, between stages 2 and 3, and halfway through the
# write of the second epoch checkpoint (writes: recipe.yaml, progress.json, progress.json as
# the first phase starts, epoch 1, epoch 2).
KILL_POINTS = [("step", 5), ("step", 14), ("epoch", 3), ("stage", 2), ("write", 5)]


@pytest.mark.parametrize(("point", "n"), KILL_POINTS)
def test_sigkill_then_resume_matches_uninterrupted_run(
    kill_setup: tuple[Path, Path], tmp_path: Path, point: str, n: int
) -> None:
    recipe, straight = kill_setup
    out = tmp_path / "run"
    killed = launch(point, n, recipe, out)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "summary.json").exists()
    resumed = launch("none", 0, recipe, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    want, got = final_weights(straight), final_weights(out)
    assert set(got) == {"teacher", "student", "student_kd"}
    assert_same_weights(want, got, point, n)
    summary = json.loads((out / "summary.json").read_text())
    reference = json.loads((straight / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == [s["name"] for s in reference["stages"]]
    for name, model in reference["models"].items():
        assert summary["models"][name]["val_accuracy"] == model["val_accuracy"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert not list(out.rglob("*.tmp")), "no temporary file is left behind"


def test_sigint_stops_cleanly_with_a_resumable_checkpoint(tmp_path: Path) -> None:
    from conftest import TINY_RECIPE

    raw = json.loads(json.dumps(TINY_RECIPE))
    raw["data"]["subset"] = None  # the whole of digits: enough steps to land inside an epoch
    raw["data"]["batch_size"] = 16
    raw["train"]["epochs"] = 2
    raw["stages"] = raw["stages"][:1]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "distill.cli", "run", str(recipe), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Resume with: distill run" in err and "--resume" in err, err
    assert "Traceback" not in err
    checkpoints = list((out / "checkpoints").rglob("epoch_*.pt"))
    assert checkpoints, "a checkpoint was written"
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill.cli",
            "run",
            str(recipe),
            "--out",
            str(out),
            "--quiet",
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][0]["epochs"] == 2


# In-process stops: the signal is sent to this process at a chosen moment of `distill run`.


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    from conftest import TINY_RECIPE

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    return recipe


def signal_at(monkeypatch: pytest.MonkeyPatch, target: object, name: str, signum: int, n: int = 1):  # noqa: ANN201
    """Send ``signum`` to this process on the ``n``-th call of ``target.name`` (then call it)."""
    original = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)
    return calls


def stop_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_sigterm_in_a_phases_last_step_stops_the_run_there(
    recipe_file: Path,
    tmp_path: Path,
    kill_setup: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import distill.methods.base as base
    from distill.cli import main

    recipe, straight = kill_setup  # 3 steps per epoch, 2 epochs per stage
    out = tmp_path / "run"
    signal_at(monkeypatch, base.Output, "__init__", signal.SIGTERM, n=6)  # the teacher's last
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 143
    monkeypatch.undo()
    err = stop_line(capsys)
    assert "[teacher] train after epoch 2: stopped by SIGTERM; a checkpoint was written" in err
    assert f"Resume with: distill run {recipe} --out {out} --resume" in err
    assert not (out / "checkpoints/student").exists(), "the next stage did not start"
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    assert_same_weights(final_weights(straight), final_weights(out))


def test_sigint_during_validation_stops_after_the_epochs_checkpoint(
    tmp_path: Path,
    kill_setup: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import distill.training.loop as loop
    from distill.cli import main

    recipe, straight = kill_setup
    out = tmp_path / "run"
    signal_at(monkeypatch, loop, "evaluate", signal.SIGINT, n=1)
    assert main(["run", str(recipe), "--out", str(out), "--quiet"]) == 130
    monkeypatch.undo()
    assert "after epoch 1: stopped by SIGINT" in stop_line(capsys)
    assert [p.name for p in (out / "checkpoints/teacher/train").iterdir()] == ["epoch_0001.pt"]
    assert main(["run", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    assert_same_weights(final_weights(straight), final_weights(out))


@pytest.mark.parametrize(("where", "signum"), [("data", signal.SIGTERM), ("start", signal.SIGINT)])
def test_a_stop_outside_training_ends_with_one_line_and_its_exit_code(
    recipe_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
    signum: int,
) -> None:
    import distill.pipeline
    import distill.recipe
    from distill.cli import main

    if where == "data":  # the run folder exists, the data is being read
        signal_at(monkeypatch, distill.pipeline, "load", signum)
    else:  # start-up: the recipe is being read
        signal_at(monkeypatch, distill.recipe, "load_recipe", signum)
    out = tmp_path / "run"
    assert main(["run", str(recipe_file), "--out", str(out), "--quiet"]) == 128 + signum
    err = stop_line(capsys)
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err
    monkeypatch.undo()
    assert main(["run", str(recipe_file), "--out", str(out), "--quiet", "--resume"]) == 0


def test_a_second_sigint_while_shutting_down_is_ignored_or_ends_in_one_line(
    recipe_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import distill.cli
    import distill.methods.base as base
    from distill.rundir import RunFolder

    out = tmp_path / "run"
    signal_at(monkeypatch, base.Output, "__init__", signal.SIGINT, n=3)
    original_unlock = RunFolder.unlock

    def unlock_then_sigint(self: RunFolder) -> None:
        original_unlock(self)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C as the run unwinds

    monkeypatch.setattr(RunFolder, "unlock", unlock_then_sigint)
    signal_at(monkeypatch, distill.cli, "_resume_command", signal.SIGINT)  # and as it prints
    code = distill.cli.main(["run", str(recipe_file), "--out", str(out), "--quiet"])
    assert code == 130
    assert "stopped by SIGINT" in stop_line(capsys)
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN, "handlers are put back"


def test_a_second_sigint_in_training_stops_at_once(
    recipe_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import distill.methods.base as base
    from distill.cli import main

    calls = {"n": 0}
    original = base.Output.__init__

    def init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # two Ctrl-C within one step
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        original(self, *args, **kwargs)

    monkeypatch.setattr(base.Output, "__init__", init)
    out = tmp_path / "run"
    assert main(["run", str(recipe_file), "--out", str(out), "--quiet"]) == 130
    assert "stopped by a second SIGINT; the last whole checkpoint is kept" in stop_line(capsys)


def test_the_command_handles_signals_before_importing_torch() -> None:
    code = "import sys, distill.cli; print('torch' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.stdout.strip() == "False", found.stderr
