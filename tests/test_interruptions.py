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
# write of the second epoch checkpoint (writes: recipe.yaml, progress.json, epoch 1, epoch 2).
KILL_POINTS = [("step", 5), ("step", 14), ("epoch", 3), ("stage", 2), ("write", 4)]


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
