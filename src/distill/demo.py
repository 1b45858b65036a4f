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
from .report import task_of


def llama(hidden: int, layers: int, intermediate: int) -> dict[str, Any]:
    """A small llama-style config: 4 attention heads sharing 2 key/value heads."""
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }


# Per dataset: the task, models and training budget of the demo, and the methods it can add.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {
        "data": {"name": "digits", "batch_size": 64},
        "teacher": {"arch": "resnet20"},
        "student": {"arch": "cnn-2"},
        # 6 epochs per student: the distilled student's lead over the student alone was
        # +1.95 to +5.28 points over seeds 0, 2, 3, 4 with 1 or 2 threads; with 8 epochs,
        # +0.83 to +4.73 over seeds 0-5, too thin to hold on every machine (README).
        "train": {
            "epochs": 6,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "schedule": {"name": "cosine"},
        },
        "teacher_epochs": 12,
    },
    "fashion-mnist": {
        "data": {"name": "fashion-mnist", "batch_size": 128, "subset": 10000},
        "teacher": {"arch": "resnet20"},
        "student": {"arch": "cnn-2"},
        "train": {
            "epochs": 6,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "schedule": {"name": "cosine"},
        },
        "teacher_epochs": 8,
    },
    # Language models: llama-style models built from a config (nothing downloaded) on the
    # bytes of the running Python's standard library (byte tokenizer, 259 ids).
    "python-stdlib": {
        "task": "causal_lm",
        "data": {
            "name": "python-stdlib",
            "seq_len": 128,
            "max_files": 150,
            "subset": 4096,
            "val_fraction": 0.05,
            "test_fraction": 0.05,
            "batch_size": 32,
        },
        "teacher": {"arch": "hf:", "config": llama(hidden=128, layers=4, intermediate=384)},
        "student": {"arch": "hf:", "config": llama(hidden=48, layers=2, intermediate=128)},
        "train": {
            "epochs": 4,
            "optimizer": {"name": "adamw", "lr": 3.0e-3, "weight_decay": 0.01},
            "schedule": {"name": "cosine"},
        },
        "teacher_epochs": 6,
        "methods": ("kd",),
        "kd": {"temperature": 1.0, "alpha": 0.5, "cache": "teacher"},
    },
}

#: What ``distill demo --task`` picks: its default dataset.
DEMO_TASKS = {"image": "digits", "lm": "python-stdlib"}


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
        **({"task": settings["task"]} if "task" in settings else {}),
        "data": copy.deepcopy(settings["data"]),
        "models": {
            "teacher": copy.deepcopy(settings["teacher"]),
            "student": copy.deepcopy(settings["student"]),
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
    allowed = settings.get("methods", tuple(entries))
    for method in methods:
        if method not in allowed:
            raise ConfigError(
                f"--methods: unknown method {method!r}{did_you_mean(method, allowed)} for the "
                f"{data} demo; allowed: {', '.join(allowed)}"
            )
        entry = entries[method]
        recipe["models"][entry.student] = copy.deepcopy(settings["student"])
        for name, arch in entry.models.items():
            recipe["models"][name] = {"arch": arch}
        recipe["stages"].append({**copy.deepcopy(entry.stage), **settings.get(method, {})})
    return recipe


def gain_lines(summary: dict[str, Any]) -> list[str]:
    """One line per distilled student: its primary validation metric against the student
    trained alone (points for a percentage, both values otherwise)."""
    metric = task_of(summary).primary
    key = f"val_{metric.name}"
    models = summary["models"]
    base = models["student"].get(key)
    lines = []
    for name, model in models.items():
        if not name.startswith("student_") or base is None or model.get(key) is None:
            continue
        if metric.percent:
            gain = 100 * (model[key] - base)
            lines.append(f"{name}: {gain:+.2f} points over the student trained alone (validation)")
        else:
            others = [m.name for m in task_of(summary).metrics_info if m.name != metric.name]
            extra = "".join(
                f", {m} {model[f'val_{m}']:.4g} vs {models['student'][f'val_{m}']:.4g}"
                for m in others[:1]
                if f"val_{m}" in model
            )
            lines.append(
                f"{name}: validation {metric.name} {model[key]:.4g} vs {base:.4g} for the "
                f"student trained alone{extra}"
            )
    return lines
