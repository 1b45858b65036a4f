"""FitNets: stage 1 changes only the guided part + regressor; stage 2 is KD without it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _readme import run_snippet
from _weights import assert_same_weights, final_weights
from torch import nn

from distill import FitNets
from distill.errors import ConfigError
from distill.losses import hint_loss
from distill.methods import KD, StageContext
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.seeding import derive_seed
from distill.tasks import get_task


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def test_hint_loss_is_the_element_mean_squared_error() -> None:
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = hint_loss(s, t)
    assert float(loss.detach()) == pytest.approx(float(((s - t) ** 2).mean().detach()))
    loss.backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="same shape"):
        hint_loss(s, t[:, :2])


def test_stage_one_changes_only_the_guided_part_and_regressor() -> None:
    torch.manual_seed(0)
    teacher = create("resnet8", num_classes=10, in_channels=1)
    student = create("cnn-4", num_classes=10, in_channels=1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    method = FitNets(teacher, student, x[:4], hint_layer="stages.1", guided_layer="stages.0")
    # stages.0 of cnn-4 is 8×8 with 32 channels, the teacher's stages.1 is 4×4 with 32.
    assert method.regressor[0].stride == (2, 2) and isinstance(method.regressor[-1], nn.ReLU)
    student_before, teacher_before = snapshot(student), snapshot(teacher)
    regressor_before = snapshot(method.regressor)

    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1, momentum=0.9)
    method.train()
    for _ in range(3):
        out = method(x, y)
        assert set(out.parts) == {"hint"} and out.logits.shape == (16, 0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    moved = changed(student_before, student)
    # Weights and BatchNorm statistics up to the guided layer moved...
    assert {"stem.conv.weight", "stem.bn.running_mean", "stages.0.0.bn.running_var"} <= moved
    assert all(k.startswith(("stem.", "stages.0.")) for k in moved), moved
    # ...nothing after it did, not even BatchNorm statistics; the teacher did not either.
    assert not changed(teacher_before, teacher)
    assert changed(regressor_before, method.regressor)
    assert not any(p.requires_grad for p in student.stages[1].parameters())

    # Stage 2 starts from the stage-1 weights, with the whole student and no regressor.
    after_stage_one = snapshot(student)
    second = method.second_phase()
    assert isinstance(second, KD) and second.student is student
    assert (second.temperature, second.alpha) == (4.0, 0.9)
    assert not changed(after_stage_one, second.student)
    assert all(p.requires_grad for p in student.parameters())
    assert {id(p) for p in second.trainable_parameters()} == {id(p) for p in student.parameters()}
    assert not any("regressor" in k for k in second.trainable_state_dict())


def test_default_layers_are_the_middle_sections_and_relu_follows_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = create("resnet8", num_classes=10, in_channels=1)
    student = create("cnn-2", num_classes=10, in_channels=1)
    x = torch.randn(4, 1, 8, 8)
    method = FitNets(teacher, student, x)
    assert (method.hint_layer, method.guided_layer) == ("stages.1", "stages.1")
    assert isinstance(method.regressor[-1], nn.ReLU)  # the hint follows a ReLU
    bare = FitNets(teacher, student, x, hint_layer="stages.1.0.bn2", guided_layer="stages.1")
    assert not isinstance(bare.regressor[-1], nn.ReLU)  # a BatchNorm output is signed
    with pytest.raises(ValueError, match="temperature"):
        FitNets(teacher, student, x, temperature=0)
    with pytest.raises(ConfigError, match=r"'stages\.1'"):
        FitNets(teacher, student, x, hint_layer="stages1")


class MLP(nn.Module):
    """A user model outside the zoo: ``[N, D]`` features, known only by layer names."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_user_models_by_layer_names() -> None:
    torch.manual_seed(0)
    teacher, student = MLP(48), MLP(16)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    method = FitNets(teacher, student, x, hint_layer="decoder.1", guided_layer="encoder")
    assert isinstance(method.regressor, nn.Linear)
    assert (method.regressor.in_features, method.regressor.out_features) == (16, 48)
    method(x, y).loss.backward()
    assert student.encoder[1].weight.grad is not None and student.decoder[0].weight.grad is None
    with pytest.raises(ConfigError, match="hint_layer: MLP is not a zoo model"):
        FitNets(teacher, student, x)


FITNETS_RECIPE = {
    "seed": 0,
    "data": {"name": "digits", "subset": 200, "batch_size": 50},
    "models": {"teacher": {"arch": "resnet8"}, "student": {"arch": "cnn-4"}},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.8}},
    "stages": [
        {"method": "train", "model": "teacher", "epochs": 1},
        {
            "method": "fitnets",
            "teacher": "teacher",
            "student": "student",
            "hint_layer": "stages.1",
            "guided_layer": "stages.0",
            "hint": {"epochs": 2, "optimizer": {"lr": 0.02}},
        },
    ],
}


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fitnets") / "straight"
    return out, Pipeline(parse_recipe(FITNETS_RECIPE), out, progress=False).run()


def test_recipe_phases_settings_and_hand_over(straight_run: tuple[Path, dict]) -> None:
    out, summary = straight_run
    stage = summary["stages"][1]
    assert [(p["name"], p["epochs"]) for p in stage["phases"]] == [("hint", 2), ("kd", 2)]
    assert (stage["temperature"], stage["alpha"]) == (4.0, 0.9)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    hint = [x for x in lines if x["phase"] == "hint"]
    assert [set(x["train"]) for x in hint] == [{"hint", "loss"}] * 2
    assert hint[0]["lr"] <= 0.02  # the hint phase's own learning rate (cosine from 0.02)
    assert [set(x["train"]) for x in lines if x["phase"] == "kd"] == [{"ce", "kd", "loss"}] * 2

    spec = parse_recipe(FITNETS_RECIPE).stages[1]
    models = {name: nn.Identity() for name in ("teacher", "student")}
    context = StageContext(models=models, sample_batch={}, task=get_task("classification"))
    hint_phase, kd_phase = spec.phases(context)
    assert hint_phase.config.optimizer.lr == 0.02 and hint_phase.config.optimizer.momentum == 0.8
    assert (hint_phase.config.epochs, kd_phase.config.optimizer.lr) == (2, 0.05)

    # The hint phase's final weights: later layers exactly as initialised.
    hint_final = torch.load(out / "checkpoints/student/hint/final.pt", weights_only=True)
    torch.manual_seed(derive_seed(0, "model", "student"))
    initial = create("cnn-4", num_classes=10, in_channels=1).state_dict()
    weights = hint_final["models"]["student"]
    for key, value in weights.items():
        same = torch.equal(value, initial[key])
        assert same == (not key.startswith(("stem.", "stages.0."))), key


@pytest.mark.parametrize("crash_at", [("hint", 1), ("kd", 1)])
def test_interrupted_run_resumes_in_the_right_phase_and_epoch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    straight_run: tuple[Path, dict],
    crash_at: tuple[str, int],
) -> None:
    original = Pipeline._append_metrics
    trained: list[tuple[str, int]] = []

    def record(self, stage, phase, method, rec):  # noqa: ANN001, ANN202
        original(self, stage, phase, method, rec)
        trained.append((phase, rec["epoch"]))
        if (phase, rec["epoch"]) == crash_at:
            raise Crash

    out = tmp_path / "crashed"
    monkeypatch.setattr(Pipeline, "_append_metrics", record)
    with pytest.raises(Crash):
        Pipeline(parse_recipe(FITNETS_RECIPE), out, progress=False).run()
    trained.clear()
    Pipeline(parse_recipe(FITNETS_RECIPE), out, progress=False, resume=True).run()
    after = {("hint", 1): [("hint", 2), ("kd", 1), ("kd", 2)], ("kd", 1): [("kd", 2)]}
    assert trained == after[crash_at]

    straight, _ = straight_run
    want = final_weights(straight, ["student"])
    assert_same_weights(want, final_weights(out, ["student"]))


def test_recipe_errors_name_the_field() -> None:
    bad = json.loads(json.dumps(FITNETS_RECIPE))
    bad["stages"][1]["hint"] = {"epochs": 0}
    with pytest.raises(ConfigError, match=r"stages\.1\.hint: epochs"):
        parse_recipe(bad)
    bad["stages"][1]["hint"] = {"optimiser": {"lr": 0.1}}
    with pytest.raises(ConfigError, match=r"stages\.1\.hint: optimiser"):
        parse_recipe(bad)
    bad["stages"][1] = {**FITNETS_RECIPE["stages"][1], "alpha": 2}
    with pytest.raises(ConfigError, match=r"stages\.1\.alpha"):
        parse_recipe(bad)


def test_readme_examples_run() -> None:
    assert run_snippet("<!-- example:fitnets -->") == [("FitNets", 3), ("KD", 8)]
    sample = torch.randn(8, 1, 8, 8)  # the FSP example reuses the FitNets example's batch
    assert run_snippet("<!-- example:fsp -->", x=sample) == [("Supervised", 8)]


RUNNER = Path(__file__).with_name("_ddp_runner.py")


@pytest.mark.skipif(
    shutil.which("torchrun") is None or not RUNNER.is_file(), reason="needs torchrun"
)
def test_two_processes_match_one_process(tmp_path: Path) -> None:
    """The stage-1 forward stops inside DDP's forward, so gradients are still synchronised:
    2 processes with half batches give the weights of 1 process with the whole batch."""
    recipe = {
        "seed": 0,
        "data": {"name": "digits", "subset": 161, "batch_size": 16},
        "models": {"teacher": {"arch": "mlp-a"}, "student": {"arch": "mlp-b"}},
        "train": {"epochs": 1, "optimizer": {"lr": 0.1}},
        "stages": [
            {"method": "train", "model": "teacher"},
            {
                "method": "fitnets",
                "teacher": "teacher",
                "student": "student",
                "hint_layer": "2",  # BatchNorm-free MLPs: per-process statistics would differ
                "guided_layer": "2",
            },
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["run", str(path), "--quiet", "--out"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    torchrun = [shutil.which("torchrun") or "", "--nproc_per_node", "2"]
    torchrun += ["--master_addr", "127.0.0.1", "--master_port", port, str(RUNNER)]
    for command in (
        [sys.executable, str(RUNNER), *args, str(tmp_path / "one"), "--set", "data.batch_size=32"],
        [*torchrun, *args, str(tmp_path / "two")],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    for phase in ("hint", "kd"):
        one, two = (
            torch.load(tmp_path / run / f"checkpoints/student/{phase}/final.pt", weights_only=True)
            for run in ("one", "two")
        )
        for key, value in one["models"]["student"].items():
            assert torch.allclose(value, two["models"]["student"][key], atol=1e-5), (phase, key)
