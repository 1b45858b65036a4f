"""Teacher input re-normalisation: the formula, the Teacher that applies it, and a run whose
teacher expects other constants than the data (a tiny fake model; no torchvision needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.models import SOURCES, create, register_source
from distill.models.normalization import (
    Renormalize,
    forget_input_normalization,
    input_normalization,
    renormalizer,
    set_input_normalization,
)
from distill.models.zoo import create_zoo
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.teachers import Teacher

DIGITS = ((0.3053,), (0.3760,))
FAKE = ((0.5,), (0.25,))


def test_renormalize_matches_the_formula_channel_by_channel() -> None:
    torch.manual_seed(0)
    data_mean, data_std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    model_mean, model_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.randn(2, 3, 4, 5)
    out = Renormalize(data_mean, data_std, model_mean, model_std)(x)
    expected = torch.empty_like(x)
    for n in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    pixel = float(x[n, c, i, j]) * data_std[c] + data_mean[c]
                    expected[n, c, i, j] = (pixel - model_mean[c]) / model_std[c]
    torch.testing.assert_close(out, expected)
    # Back to pixels: the model's normalisation of the same pixels.
    pixels = x * torch.tensor(data_std).view(3, 1, 1) + torch.tensor(data_mean).view(3, 1, 1)
    direct = (pixels - torch.tensor(model_mean).view(3, 1, 1)) / torch.tensor(model_std).view(
        3, 1, 1
    )
    torch.testing.assert_close(out, direct)


def test_renormalize_keeps_dtype_and_refuses_other_channel_counts() -> None:
    renorm = Renormalize((0.0,), (1.0,), (0.5,), (0.5,))
    x = torch.ones(1, 1, 2, 2, dtype=torch.bfloat16)
    assert renorm(x).dtype == torch.bfloat16
    assert torch.equal(renorm(x).float(), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\[\.\.\., 1, H, W\]"):
        renorm(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ConfigError, match="one value per channel"):
        Renormalize((0.0,), (1.0,), (0.5, 0.5), (0.5, 0.5))


def test_renormalizer_only_when_the_constants_differ() -> None:
    model = nn.Conv2d(1, 1, 1)
    assert renormalizer(*DIGITS, model) is None  # the model expects nothing in particular
    set_input_normalization(model, *DIGITS)
    assert input_normalization(model) == DIGITS
    assert renormalizer(*DIGITS, model) is None  # same constants
    assert renormalizer(None, None, model) is None  # the data's unknown
    set_input_normalization(model, *FAKE)
    assert isinstance(renormalizer(*DIGITS, model), Renormalize)
    with pytest.raises(ConfigError, match="1 channel.*data has 3"):
        renormalizer((0.5,) * 3, (0.2,) * 3, model)
    forget_input_normalization(model)
    assert input_normalization(model) is None and renormalizer(*DIGITS, model) is None


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [
        ([0.5], [0.0], "positive"),
        ([0.5, 0.5], [0.2], "one value per channel each"),
        ("0.5", [0.2], "list of numbers"),
        ([float("nan")], [0.2], "finite"),
    ],
)
def test_set_input_normalization_checks_its_values(mean: Any, std: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        set_input_normalization(nn.Identity(), mean, std)


class Recorder(nn.Module):
    """A tiny classifier that keeps the inputs of its last forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 10)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.head(self.body(x).mean(dim=(2, 3)))


def test_teacher_renormalizes_logits_and_features_and_keeps_layer_names() -> None:
    torch.manual_seed(0)
    model = Recorder()
    renorm = Renormalize(*DIGITS, *FAKE)
    teacher = Teacher(model, "classification", renormalize=renorm)
    x = torch.randn(3, 1, 6, 6)
    batch = {"inputs": x, "targets": torch.zeros(3, dtype=torch.long)}
    logits = teacher(batch)
    expected_inputs = ((x * DIGITS[1][0] + DIGITS[0][0]) - FAKE[0][0]) / FAKE[1][0]
    torch.testing.assert_close(model.seen[-1], expected_inputs)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(expected_inputs))
    features = teacher.features(batch, ["body"])  # the model's own name, not "module.body"
    with torch.no_grad():
        torch.testing.assert_close(features["body"], model.body(expected_inputs))
    assert torch.equal(batch["inputs"], x)  # the caller's batch is left alone
    assert "renormalize.model_std" in dict(teacher.named_buffers())  # moves with .to(device)
    plain = Teacher(Recorder(), "classification")
    plain(batch)
    assert torch.equal(plain.module.seen[-1], x)


# -- a run whose teacher expects other constants ------------------------------------------------


@pytest.fixture
def fake_source():  # noqa: ANN201
    """``fakenorm:cnn-2``: a zoo model that, with ``weights``, expects mean 0.5 / std 0.25 and
    records the inputs it is given."""
    seen: list[torch.Tensor] = []

    def fakenorm(
        name: str, *, num_classes: int = 10, in_channels: int = 1, weights: str | None = None
    ) -> nn.Module:
        model = create_zoo(name, num_classes=num_classes, in_channels=in_channels)
        if weights is not None:
            model.load_state_dict(torch.load(weights, weights_only=True))
            set_input_normalization(model, *FAKE)
        model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
        return model

    register_source("fakenorm")(fakenorm)
    yield seen
    SOURCES.pop("fakenorm", None)


def recipe(weights: Path, *, train_teacher: bool = False) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [{"method": "kd", "teacher": "teacher", "student": "student"}]
    if train_teacher:
        stages.insert(0, {"method": "train", "model": "teacher"})
    return {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 40},
        "models": {
            "teacher": {"arch": "fakenorm:cnn-2", "weights": str(weights)},
            "student": {"arch": "cnn-2"},
        },
        "train": {"epochs": 1},
        "stages": stages,
    }


def test_a_run_renormalizes_a_pretrained_teacher_and_says_so(
    tmp_path: Path, fake_source: list[torch.Tensor]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "teacher.pt"
    torch.save(create("cnn-2", num_classes=10, in_channels=1).state_dict(), weights)
    logged: list[str] = []
    out = tmp_path / "run"
    summary = Pipeline(parse_recipe(recipe(weights)), out, progress=False, log=logged.append).run()
    # The teacher saw the data re-normalised: digits normalised with their own constants have
    # a mean near 0; taken to mean 0.5 / std 0.25 they have a mean near (0.3053 - 0.5) / 0.25.
    seen = torch.cat(fake_source)
    assert seen.mean().item() == pytest.approx((DIGITS[0][0] - FAKE[0][0]) / FAKE[1][0], abs=0.1)
    notes = [line for line in logged if "re-normalised" in line]
    assert len(notes) == 1 and "`teacher`" in notes[0] and "(0.5)" in notes[0]
    assert summary["notes"] == notes
    assert json.loads((out / "summary.json").read_text())["notes"] == notes
    report = (out / "report.md").read_text()
    assert notes[0] in report.split("## Models")[0]  # in the report's header
    assert summary["models"]["teacher"]["trained_by"] == "weights"


def test_a_teacher_trained_by_the_run_takes_the_data_as_it_is(
    tmp_path: Path, fake_source: list[torch.Tensor]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "teacher.pt"
    torch.save(create("cnn-2", num_classes=10, in_channels=1).state_dict(), weights)
    logged: list[str] = []
    summary = Pipeline(
        parse_recipe(recipe(weights, train_teacher=True)),
        tmp_path / "run",
        progress=False,
        log=logged.append,
    ).run()
    assert "notes" not in summary
    assert not any("re-normalised" in line for line in logged)
    assert abs(torch.cat(fake_source).mean().item()) < 0.3  # the data's normalisation
