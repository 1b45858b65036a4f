"""The demo recipe: a teacher, the student alone, and the same student distilled.

Each method's demo entry (:class:`~distill.methods.DemoEntry`, in the method's own module)
says which student it trains and with which stage, so ``distill demo --methods kd,...``
composes one recipe. The budget is chosen so the demo ends in about a minute on 2 CPU cores
on digits, and so the distilled student beats the same student trained alone on both
datasets (see the README for a real run).
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError, did_you_mean
from .methods import METHODS, DemoEntry

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


def demo_methods() -> dict[str, DemoEntry]:
    """Method name -> its demo entry, for every method that has one."""
    return {name: spec.demo for name, spec in METHODS.items() if spec.demo is not None}


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
    entries = demo_methods()
    for method in methods:
        if method not in entries:
            raise ConfigError(
                f"--methods: unknown method {method!r}{did_you_mean(method, entries)}; "
                f"allowed: {', '.join(entries)}"
            )
        entry = entries[method]
        recipe["models"][entry.student] = {"arch": settings["student"]}
        for name, arch in entry.models.items():
            recipe["models"][name] = {"arch": arch}
        recipe["stages"].append(copy.deepcopy(entry.stage))
    return recipe
