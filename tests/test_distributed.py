"""Several processes (CPU, gloo, 2 processes through torchrun) give the results of one process
with the global batch: same weights for KD and DML, one writer, whole-set validation accuracy,
and kill + resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _weights import assert_same_weights, final_weights

RUNNER = Path(__file__).with_name("_ddp_runner.py")
TORCHRUN = shutil.which("torchrun")

# 321 digits: 256 training images (8 global batches of 32 = 2 × 16 per process) and 65
# validation images, an odd number, so the validation shards need padding that must not count.
RECIPE = {
    "seed": 0,
    "data": {"name": "digits", "subset": 321, "batch_size": 16},
    "models": {
        "teacher": {"arch": "mlp-a"},
        "student": {"arch": "mlp-b"},
        "peer_a": {"arch": "mlp-b"},
        "peer_b": {"arch": "mlp-a"},
    },
    "train": {"epochs": 3, "optimizer": {"lr": 0.1}},
    "stages": [
        {"method": "train", "model": "teacher"},
        {"method": "kd", "teacher": "teacher", "student": "student"},
        {"method": "dml", "cohort": ["peer_a", "peer_b"]},
    ],
}

pytestmark = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(out: Path, recipe: Path, processes: int, *extra: str) -> list[str]:
    args = ["run", str(recipe), "--out", str(out), "--quiet", *extra]
    if processes == 1:
        return [sys.executable, str(RUNNER), *args]
    return [
        TORCHRUN,
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(RUNNER),
        *args,
    ]


def run(out: Path, recipe: Path, processes: int, *extra: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        command(out, recipe, processes, *extra),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same(a: dict, b: dict, atol: float) -> None:
    assert set(a) == set(b)
    assert_same_weights(a, b, atol=atol)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    single, double = root / "single", root / "double"
    run(single, recipe, 1, "--set", "data.batch_size=32")
    run(double, recipe, 2)
    return {"recipe": recipe, "single": single, "double": double, "root": root}


def test_two_processes_match_one_process_with_the_global_batch(runs: dict) -> None:
    assert_same(final_weights(runs["single"]), final_weights(runs["double"]), atol=1e-5)


def test_one_writer_and_whole_set_validation(runs: dict) -> None:
    out = runs["double"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # 3 epochs for teacher and student, 3 epochs × 2 members for the cohort: no duplicate.
    assert len(lines) == 3 + 3 + 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["val"] == 65
    single = json.loads((runs["single"] / "summary.json").read_text())
    for name, model in single["models"].items():
        assert summary["models"][name]["val_accuracy"] == pytest.approx(model["val_accuracy"])
        # 65 images: accuracy is a multiple of 1/65, which one shard (33 or 32) cannot give.
        assert round(model["val_accuracy"] * 65, 6).is_integer()
    assert not list(out.rglob("*.tmp"))


def test_killed_two_process_run_resumes_to_the_same_weights(runs: dict) -> None:
    out = runs["root"] / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        command(out, runs["recipe"], 2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while (
        time.time() < deadline
        and len(metrics.read_text().splitlines() if metrics.exists() else []) < 4
    ):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (out / "summary.json").exists(), "killed before the end"
    run(out, runs["recipe"], 2, "--resume")
    assert_same(final_weights(runs["double"]), final_weights(out), atol=0)


def test_a_language_model_recipe_takes_token_means_over_both_processes(tmp_path: Path) -> None:
    """Completions of unequal lengths (the prompt carries no loss), so processes and batches
    hold unequal token counts: a per-process or per-batch mean would differ from one process
    with the global batch."""
    pytest.importorskip("transformers")
    records = tmp_path / "records.jsonl"
    with records.open("w") as f:
        for i in range(40):
            prompt = "def f(x):\n" + "    x += 1\n" * (i % 5)
            f.write(json.dumps({"prompt": prompt, "completion": "    return x" + "!" * (i % 7)}))
            f.write("\n")
    llama = {"model_type": "llama", "intermediate_size": 32, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 128}
    recipe = tmp_path / "lm.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "task": "causal_lm",
                "data": {"name": "jsonl", "files": [str(records)], "seq_len": 96,
                         "subset": 32, "batch_size": 8, "test_fraction": 0},
                "models": {
                    "teacher": {"arch": "hf:", "config": {**llama, "hidden_size": 16,
                                                          "num_hidden_layers": 2}},
                    "student": {"arch": "hf:", "config": {**llama, "hidden_size": 8,
                                                          "num_hidden_layers": 1}},
                },
                "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01}},
                "stages": [
                    {"method": "train", "model": "teacher"},
                    {"method": "kd", "teacher": "teacher", "student": "student",
                     "loss": {"kind": "reverse_kl"}},
                ],
            }
        )
    )
    single, double = tmp_path / "single", tmp_path / "double"
    run(single, recipe, 1, "--set", "data.batch_size=16")
    run(double, recipe, 2)
    assert_same(final_weights(single), final_weights(double), atol=1e-5)
