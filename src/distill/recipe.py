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

from .config import TRAIN_FIELDS, DataConfig, ModelConfig, TrainConfig, deep_merge
from .errors import ConfigError, did_you_mean
from .methods import METHODS, StageSpec

TOP_LEVEL_KEYS = ("seed", "data", "models", "train", "stages")


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        raw: the recipe as a plain dict after ``--set`` overrides (what is written to the run
            directory and fingerprinted).
        stages: one validated :class:`StageSpec` per stage, with its training settings merged.
    """

    seed: int
    data: DataConfig
    models: dict[str, ModelConfig]
    train: TrainConfig
    stages: list[StageSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = "<recipe>"

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


def _format_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _errors_to_message(
    exc: ValidationError, prefix: str, model: type[BaseModel], rename: dict[str, str] | None = None
) -> str:
    """One line per problem, each naming the field, the value and what would be right."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if rename and loc and loc[0] in rename:
            where = rename[loc[0]] + "".join(f".{p}" for p in loc[1:])
        else:
            where = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            key = loc[-1]
            allowed = _allowed_keys(model, loc[:-1])
            hint = did_you_mean(key, allowed)
            lines.append(f"{where}: unknown key{hint}; allowed keys: {', '.join(allowed)}")
            continue
        message = err["msg"]
        message = message[0].lower() + message[1:] if message else message
        message = message.replace("input should be", "must be").replace("value error, ", "")
        if kind == "missing":
            lines.append(f"{where}: required field is missing")
        else:
            lines.append(f"{where}: {message}, got {_format_value(err.get('input'))}")
    return "; ".join(lines)


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the (nested) pydantic model at ``path``."""
    current: Any = model
    for part in path:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        annotation = fields[part].annotation
        current = annotation if isinstance(annotation, type) else None
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return [k for k in fields if k not in ("train",)] if current is not None else []


def _validate(model: type[BaseModel], value: Any, prefix: str, **kw: Any) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(_errors_to_message(exc, prefix, model, **kw)) from None


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
        raise ConfigError(f"seed: must be a non-negative integer, got {_format_value(seed)}")
    data = _validate(DataConfig, raw.get("data") or {}, "data")

    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ConfigError(
            "models: must map model names to {arch: ...}, e.g. "
            f"{{teacher: {{arch: resnet20}}}}; got {_format_value(models_raw)}"
        )
    models: dict[str, ModelConfig] = {}
    for name, spec in models_raw.items():
        if isinstance(spec, str):
            spec = {"arch": spec}
        models[str(name)] = _validate(ModelConfig, spec, f"models.{name}")

    train_raw = raw.get("train") or {}
    if not isinstance(train_raw, dict):
        raise ConfigError(f"train: must be a mapping, got {_format_value(train_raw)}")
    train = _validate(TrainConfig, train_raw, "train")

    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(
            "stages: must be a non-empty list, e.g. [{method: train, model: teacher}]; got "
            f"{_format_value(stages_raw)}"
        )
    stages = [_parse_stage(i, stage, train_raw, models) for i, stage in enumerate(stages_raw)]
    recipe = Recipe(
        seed=seed, data=data, models=models, train=train, stages=stages, raw=raw, source=source
    )
    _check_dependencies(recipe)
    return recipe


def _parse_stage(
    index: int, stage: Any, train_raw: dict[str, Any], models: dict[str, ModelConfig]
) -> StageSpec:
    where = f"stages.{index}"
    if not isinstance(stage, dict):
        raise ConfigError(f"{where}: must be a mapping with a 'method', got {_format_value(stage)}")
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
        raise ConfigError(_errors_to_message(exc, "", TrainConfig, rename=rename)) from None
    spec = _validate(spec_cls, {**own, "train": train}, where)
    for field_name, model_name in _model_references(spec):
        if model_name not in models:
            raise ConfigError(
                f"{where}.{field_name}: unknown model {model_name!r}"
                f"{did_you_mean(model_name, models)}; models defined: {', '.join(models)}"
            )
    return spec


def _model_references(spec: StageSpec) -> list[tuple[str, str]]:
    """(field, model name) pairs for every model a stage names."""
    refs = []
    for field_name in type(spec).model_fields:
        value = getattr(spec, field_name)
        if field_name in ("method", "name", "train"):
            continue
        if field_name in ("model", "teacher", "student") and isinstance(value, str):
            refs.append((field_name, value))
        elif field_name in ("chain", "cohort") and isinstance(value, list):
            refs.extend((f"{field_name}.{i}", v) for i, v in enumerate(value) if isinstance(v, str))
    used = {name for _, name in refs}
    for name in [*spec.uses(), *spec.produces()]:
        if name not in used:
            refs.append(("model", name))
    return refs


def _check_dependencies(recipe: Recipe) -> None:
    """Every teacher must be trained by an earlier stage or loaded from a checkpoint; no model
    teaches itself."""
    available = {name for name, m in recipe.models.items() if m.checkpoint}
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
                    f"trains it and models.{name} has no checkpoint; add a stage "
                    f"{{method: train, model: {name}}} before this one or set "
                    f"models.{name}.checkpoint"
                )
        available.update(produced)
