"""Recipes: YAML files that name the data, the models and an ordered list of stages.

A recipe is read with ``yaml.safe_load`` (nothing in it can run code) and validated field by
field. Every error names the field, the value given and what would be right, e.g.::

    stages.2.temperature: must be greater than 0, got -1.0
    stages.1.method: unknown method 'kdd' (did you mean 'kd'?); allowed: train, kd, ...
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import (
    TRAIN_FIELDS,
    DataConfig,
    ModelConfig,
    TrainConfig,
    deep_merge,
    format_value,
    validation_message,
)
from .errors import ConfigError, did_you_mean
from .methods import METHODS, StageSpec
from .tasks import TASKS

TOP_LEVEL_KEYS = ("seed", "task", "data", "models", "train", "stages")


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        raw: the recipe as a plain dict after ``--set`` overrides (what is written to the run
            directory and fingerprinted).
        stages: one validated :class:`StageSpec` per stage, with its training settings merged.
        task: a key of :data:`distill.tasks.TASKS` (``classification`` by default).
    """

    seed: int
    data: DataConfig
    models: dict[str, ModelConfig]
    train: TrainConfig
    stages: list[StageSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = "<recipe>"
    task: str = "classification"

    def fingerprint(self) -> str:
        """A hash of the recipe's content; two runs of the same recipe share it."""
        text = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stage_names(self) -> list[str]:
        """Unique names of the stages (``name``-2, -3... when two stages share a name)."""
        names: list[str] = []
        for spec in self.stages:
            base = spec.stage_name()
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names


def _validate(model: type[BaseModel], value: Any, prefix: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, model, prefix)) from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``--set a.b.0.c=VALUE`` to ``raw`` in place (VALUE in YAML syntax)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.epochs=2")
    path, _, text = assignment.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from None
    parts = [p for p in path.strip().split(".")]
    if not parts or any(not p for p in parts):
        raise ConfigError(f"--set {assignment!r}: the key {path!r} is not a dotted path")
    if parts[0] not in TOP_LEVEL_KEYS:
        raise ConfigError(
            f"--set {assignment!r}: unknown top-level key {parts[0]!r}"
            f"{did_you_mean(parts[0], TOP_LEVEL_KEYS)}; allowed: {', '.join(TOP_LEVEL_KEYS)}"
        )
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where, assignment)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise ConfigError(f"--set {assignment!r}: {where} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, path, assignment)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {assignment!r}: cannot set a field inside a value")


def _list_index(node: list[Any], part: str, where: str, assignment: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"--set {assignment!r}: {where} must be an index from 0 to {len(node) - 1}, "
            f"got {part!r}"
        )
    return int(part)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (UTF-8 YAML expected)") from None
    return parse_recipe(raw, overrides=overrides, source=str(path))


def parse_recipe(
    raw: Any, *, overrides: list[str] | tuple[str, ...] = (), source: str = "<recipe>"
) -> Recipe:
    """Validate a recipe given as a dict (as ``yaml.safe_load`` returns it)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: a recipe must be a mapping with keys {', '.join(TOP_LEVEL_KEYS)}; "
            f"got {type(raw).__name__}"
        )
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{key}: unknown key{did_you_mean(str(key), TOP_LEVEL_KEYS)}; allowed keys: "
                f"{', '.join(TOP_LEVEL_KEYS)}"
            )
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {format_value(seed)}")
    task = raw.get("task", "classification")
    if task not in TASKS:
        raise ConfigError(
            f"task: unknown task {format_value(task)}{did_you_mean(str(task), TASKS)}; "
            f"allowed: {', '.join(TASKS)}"
        )
    data = _validate(DataConfig, raw.get("data") or {}, "data")

    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError(
            "models: must map model names to {arch: ...}, e.g. "
            f"{{teacher: {{arch: resnet20}}}}; got {format_value(models_raw)}"
        )
    models: dict[str, ModelConfig] = {}
    for name, spec in models_raw.items():
        if isinstance(spec, str):
            spec = {"arch": spec}
        models[str(name)] = _validate(ModelConfig, spec, f"models.{name}")

    train_raw = raw.get("train") or {}
    if not isinstance(train_raw, dict):
        raise ConfigError(f"train: must be a mapping, got {format_value(train_raw)}")
    train = _validate(TrainConfig, train_raw, "train")

    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(
            "stages: must be a non-empty list, e.g. [{method: train, model: teacher}]; got "
            f"{format_value(stages_raw)}"
        )
    stages = [_parse_stage(i, stage, train_raw, models) for i, stage in enumerate(stages_raw)]
    recipe = Recipe(
        seed=seed,
        data=data,
        models=models,
        train=train,
        stages=stages,
        raw=raw,
        source=source,
        task=task,
    )
    _check_dependencies(recipe)
    return recipe


def _parse_stage(
    index: int, stage: Any, train_raw: dict[str, Any], models: dict[str, ModelConfig]
) -> StageSpec:
    where = f"stages.{index}"
    if not isinstance(stage, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'method', got {format_value(stage)}")
    method = stage.get("method")
    if method not in METHODS:
        raise ConfigError(
            f"{where}.method: unknown method {method!r}{did_you_mean(str(method), METHODS)}; "
            f"allowed: {', '.join(METHODS)}"
        )
    spec_cls = METHODS[method]
    own = {k: v for k, v in stage.items() if k not in TRAIN_FIELDS and k != "train"}
    overrides = {k: v for k, v in stage.items() if k in TRAIN_FIELDS}
    if isinstance(stage.get("train"), dict):
        overrides = deep_merge(stage["train"], overrides)
    merged = deep_merge(train_raw, overrides)
    try:
        train = TrainConfig.model_validate(merged)
    except ValidationError as exc:
        rename = {k: f"{where}.{k}" for k in overrides}
        rename.update({k: f"train.{k}" for k in TRAIN_FIELDS if k not in overrides})
        raise ConfigError(validation_message(exc, TrainConfig, rename=rename)) from None
    spec = _validate(spec_cls, {**own, "train": train}, where)
    for field_name, model_name in spec.references():
        if model_name not in models:
            raise ConfigError(
                f"{where}.{field_name}: unknown model {model_name!r}"
                f"{did_you_mean(model_name, models)}; models defined: {', '.join(models)}"
            )
    return spec


def _check_dependencies(recipe: Recipe) -> None:
    """Every teacher must be trained by an earlier stage or loaded from a checkpoint or weights
    file; no model teaches itself."""
    available = {name for name, m in recipe.models.items() if m.checkpoint or m.weights}
    for index, spec in enumerate(recipe.stages):
        produced = spec.produces()
        for name in spec.uses():
            if name in produced:
                raise ConfigError(
                    f"stages.{index}: model {name!r} is both a teacher and a student of this "
                    "stage; a model cannot teach itself"
                )
            if name not in available:
                raise ConfigError(
                    f"stages.{index}: model {name!r} is used as a teacher but no earlier stage "
                    f"trains it and models.{name} has no checkpoint (nor weights); add a stage "
                    f"{{method: train, model: {name}}} before this one or set "
                    f"models.{name}.checkpoint"
                )
        available.update(produced)
