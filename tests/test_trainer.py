"""The trainer: optimizers, schedules, precision, checkpoints and exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.config import ScheduleConfig, TrainConfig
from distill.data import load_data
from distill.errors import ConfigError
from distill.methods import KD, Supervised
from distill.models import create
from distill.seeding import derive_seed
from distill.training import Trainer, evaluate, lr_factor


class Crash(RuntimeError):
    pass


def digits():
    return load_data("digits", subset=200, seed=0)


def fresh_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create("cnn-4", num_classes=10, in_channels=1)
    torch.manual_seed(1)
    student = create("cnn-2", num_classes=10, in_channels=1)
    return teacher, student


def config(**kw) -> TrainConfig:
    return TrainConfig.model_validate({"epochs": 3, "optimizer": {"lr": 0.05}, **kw})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_crash_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = digits()
    teacher, student = fresh_models()
    Trainer(config(), batch_size=32, seed=7, progress=False).fit(
        KD(teacher, student), data.train, data.val, {"student": student}
    )
    straight = weights(student)

    teacher, student = fresh_models()
    calls = []

    def crash_after_first_epoch(record: dict) -> None:
        calls.append(record["epoch"])
        raise Crash

    trainer = Trainer(
        config(),
        batch_size=32,
        seed=7,
        progress=False,
        checkpoint_dir=tmp_path,
        on_epoch_end=crash_after_first_epoch,
    )
    with pytest.raises(Crash):
        trainer.fit(KD(teacher, student), data.train, data.val, {"student": student})
    assert calls == [1] and (tmp_path / "epoch_0001.pt").is_file()

    # A new process: fresh objects, resumed from the checkpoint on disk.
    teacher, student = fresh_models()
    result = Trainer(config(), batch_size=32, seed=7, progress=False, checkpoint_dir=tmp_path).fit(
        KD(teacher, student), data.train, data.val, {"student": student}, resume=True
    )
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for key, value in weights(student).items():
        assert torch.equal(value, straight[key]), key


def test_progress_is_saved_in_checkpoints_and_restored(tmp_path: Path) -> None:
    data = digits()
    _, student = fresh_models()
    method = Supervised(student)
    Trainer(config(epochs=2), batch_size=32, progress=False, checkpoint_dir=tmp_path).fit(
        method, data.train, None, {}
    )
    # 160 training images in batches of 32: 5 steps an epoch; the last step is step 9.
    assert (method.progress.epoch, method.progress.step) == (1, 9)
    state = torch.load(tmp_path / "epoch_0002.pt", weights_only=True)
    assert state["progress"] == {"epoch": 1, "step": 9, "epochs": 2, "steps_per_epoch": 5}
    # A new process resuming a finished phase trains nothing and knows where training was.
    again = Supervised(fresh_models()[1])
    Trainer(config(epochs=2), batch_size=32, progress=False, checkpoint_dir=tmp_path).fit(
        again, data.train, None, {}, resume=True
    )
    assert again.progress == method.progress


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    data = digits()
    _, student = fresh_models()
    Trainer(config(epochs=2), batch_size=32, progress=False, checkpoint_dir=tmp_path).fit(
        Supervised(student), data.train, data.val, {"student": student}
    )
    newest = tmp_path / "epoch_0002.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    trainer = Trainer(config(epochs=2), batch_size=32, progress=False, checkpoint_dir=tmp_path)
    state = trainer.checkpoints.latest()
    assert state is not None and state["epoch"] == 1


def test_training_improves_accuracy_and_history_is_complete() -> None:
    data = load_data("digits", subset=600, seed=0)
    _, student = fresh_models()
    before = evaluate(student, data.val)["accuracy"]
    result = Trainer(config(epochs=5), batch_size=16, progress=False).fit(
        Supervised(student), data.train, data.val, {"student": student}
    )
    after = result.final_val["student"]["accuracy"]
    assert after > max(before + 0.3, 0.6)
    rec = result.history[-1]
    assert set(rec) >= {"epoch", "train", "val", "seconds", "lr"}
    assert rec["train"]["ce"] > 0 and 0 <= after <= 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"precision": "bf16"},
        {"channels_last": True},
        {"grad_accum_steps": 3, "clip_grad_norm": 1.0},
        {"optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}},
        {"schedule": {"name": "onecycle"}},
        {"schedule": {"name": "step", "milestones": [1], "warmup_epochs": 1}},
    ],
)
def test_options_train(overrides: dict) -> None:
    data = digits()
    _, student = fresh_models()
    cfg = config(epochs=2, **overrides)
    result = Trainer(cfg, batch_size=32, progress=False).fit(
        Supervised(student), data.train, data.val, {"student": student}
    )
    assert math.isfinite(result.history[-1]["train"]["loss"])


def test_grad_accumulation_makes_fewer_optimizer_steps() -> None:
    data = digits()
    _, student = fresh_models()
    cfg = config(epochs=1, grad_accum_steps=2, schedule={"name": "constant"})
    seen = []
    method = Supervised(student)
    opt_steps = []
    original = torch.optim.SGD.step

    def counting_step(self, *a, **k):  # noqa: ANN001, ANN202
        opt_steps.append(1)
        return original(self, *a, **k)

    torch.optim.SGD.step = counting_step
    try:
        Trainer(cfg, batch_size=20, progress=False, on_epoch_end=seen.append).fit(
            method, data.train, data.val, {"s": student}
        )
    finally:
        torch.optim.SGD.step = original
    batches = math.ceil(len(data.train) / 20)
    assert len(opt_steps) == math.ceil(batches / 2)


def test_schedules() -> None:
    cosine = ScheduleConfig(name="cosine")
    assert lr_factor(cosine, 0, 10, 5) == pytest.approx(1.0)
    assert lr_factor(cosine, 25, 10, 5) == pytest.approx(0.5)
    assert lr_factor(cosine, 50, 10, 5) == pytest.approx(0.0, abs=1e-9)
    warm = ScheduleConfig(name="cosine", warmup_epochs=1)
    assert lr_factor(warm, 0, 10, 5) < 0.2 < lr_factor(warm, 9, 10, 5) <= 1.0
    step = ScheduleConfig(name="step", step_size=2, gamma=0.1)
    assert lr_factor(step, 19, 10, 5) == pytest.approx(1.0)
    assert lr_factor(step, 20, 10, 5) == pytest.approx(0.1)
    one = ScheduleConfig(name="onecycle")
    assert lr_factor(one, 0, 10, 10) == pytest.approx(1 / 25)
    assert lr_factor(one, 30, 10, 10) == pytest.approx(1.0)
    assert lr_factor(one, 100, 10, 10) < 1e-4


def test_fp16_on_cpu_is_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match="bf16"):
        Trainer(config(precision="fp16"), progress=False, device="cpu")


def test_derive_seed_is_stable() -> None:
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1) != derive_seed(0, "a", 2)
