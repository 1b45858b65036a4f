"""The demo recipe: a teacher, the student alone, and the same student distilled.

``DEMO_METHODS`` maps each method the demo can add to the model it trains and its stage, so
``distill demo --methods kd,...`` composes one recipe. The budget is chosen so the demo ends in
about a minute on 2 CPU cores on digits, and so the distilled student beats the same student
trained alone on both datasets (see the README for a real run).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError, did_you_mean

# Per dataset: the architectures and training budget of the demo.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": {"name": "digits", "batch_size": 64},
        "teacher": "resnet20",
        "student": "cnn-2",
        "train": {
            "epochs": 8,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "schedule": {"name": "cosine"},
        },
        "teacher_epochs": 12,
    },
    "fashion-mnist": {
        "data": {"name": "fashion-mnist", "batch_size": 128, "subset": 10000},
        "teacher": "resnet20",
        "student": "cnn-2",
        "train": {
            "epochs": 6,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "schedule": {"name": "cosine"},
        },
        "teacher_epochs": 8,
    },
}

# method -> (student model name, stage). The stage's teacher is always "teacher".
DEMO_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "kd": (
        "student_kd",
        {
            "method": "kd",
            "teacher": "teacher",
            "student": "student_kd",
            "temperature": 4.0,
            "alpha": 0.9,
        },
    ),
    # TAKD: the student learns from an assistant (cnn-4, between resnet20 and cnn-2 in size, as
    # assistant_ladder("resnet20", "cnn-2") picks) that learnt from the teacher.
    "takd": (
        "student_takd",
        {
            "method": "takd",
            "chain": ["teacher", "assistant", "student_takd"],
            "temperature": 4.0,
            "alpha": 0.9,
            "_models": {"assistant": "cnn-4"},
        },
    ),
    # DML: the student learns from scratch together with a larger peer; no teacher involved.
    "dml": (
        "student_dml",
        {
            "method": "dml",
            "cohort": ["dml_peer", "student_dml"],
            "temperature": 1.0,
            "_models": {"dml_peer": "cnn-4"},
        },
    ),
    # FitNets: 3 hint epochs (student stem..stages.1 + a 1x1 conv regressor on the teacher's
    # middle section, both [N, 32, H/2, W/2] on either dataset), then KD for the usual epochs.
    "fitnets": (
        "student_fitnets",
        {
            "method": "fitnets",
            "teacher": "teacher",
            "student": "student_fitnets",
            "hint_layer": "stages.1",
            "guided_layer": "stages.1",
            "hint": {"epochs": 3},
            "temperature": 4.0,
            "alpha": 0.9,
        },
    ),
    # FSP as in the paper: 3 epochs on the FSP matrices of the first two sections (16×16 and
    # 16×32 channels in both models), at a small learning rate (the loss sums C1·C2 squared
    # entries), then cross-entropy for the usual epochs.
    "fsp": (
        "student_fsp",
        {
            "method": "fsp",
            "teacher": "teacher",
            "student": "student_fsp",
            "pairs": [
                {"student": ["stem", "stages.0"], "teacher": ["stem", "stages.0"]},
                {"student": ["stages.0", "stages.1"], "teacher": ["stages.0", "stages.1"]},
            ],
            "fsp": {"epochs": 3, "optimizer": {"lr": 2.0e-4}},
            "finetune": "ce",
        },
    ),
}


def demo_recipe(
    data: str = "digits",
    methods: list[str] | tuple[str, ...] = ("kd",),
    data_dir: str | None = None,
) -> dict[str, Any]:
    """The demo as a recipe dict (what ``distill demo`` runs)."""
    if data not in DEMO_SETTINGS:
        raise ConfigError(
            f"--data: unknown demo dataset {data!r}{did_you_mean(data, DEMO_SETTINGS)}; "
            f"allowed: {', '.join(DEMO_SETTINGS)}"
        )
    settings = DEMO_SETTINGS[data]
    recipe: dict[str, Any] = {
        "seed": 0,
        "data": copy.deepcopy(settings["data"]),
        "models": {
            "teacher": {"arch": settings["teacher"]},
            "student": {"arch": settings["student"]},
        },
        "train": copy.deepcopy(settings["train"]),
        "stages": [
            {"method": "train", "model": "teacher", "epochs": settings["teacher_epochs"]},
            {"method": "train", "model": "student"},
        ],
    }
    if data_dir:
        recipe["data"]["dir"] = data_dir
    for method in methods:
        if method not in DEMO_METHODS:
            raise ConfigError(
                f"--methods: unknown method {method!r}{did_you_mean(method, DEMO_METHODS)}; "
                f"allowed: {', '.join(DEMO_METHODS)}"
            )
        student, stage = DEMO_METHODS[method]
        recipe["models"][student] = {"arch": settings["student"]}
        extra_models = stage.get("_models", {})
        for name, arch in extra_models.items():
            recipe["models"][name] = {"arch": arch}
        recipe["stages"].append({k: v for k, v in stage.items() if k != "_models"})
    return recipe
