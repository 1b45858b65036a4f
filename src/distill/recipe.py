"""Recipes: YAML files that name the data, the models and an ordered list of stages.

A recipe is read with ``yaml.safe_load`` (nothing in it can run code) and validated field by
field. Every error names the field, the value given and what would be right, e.g.::

    stages.2.temperature: must be greater than 0, got -1.0
    stages.1.method: unknown method 'kdd' (did you mean 'kd'?); allowed: train, kd, ...

YAML is read by :func:`load_yaml` (recipe files and ``--set`` values alike), which also
refuses a key given twice in one mapping, aliases that expand to more than
:data:`YAML_MAX_VALUES` values and nesting deeper than :data:`YAML_MAX_DEPTH` levels.
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

from .checks import name_problem
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
#: The largest integer a recipe may hold (int64): larger ones overflow torch and NumPy.
INT_MAX = 2**63 - 1
#: How many values a YAML document may expand to through its aliases (an "alias bomb" of a
#: few lines expands to billions), and how deeply it may nest.
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 50


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line and column) and what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or ["invalid YAML"])[0]
    return f"malformed YAML{where}: {' '.join(problem.split())}"


def _check_nodes(node: yaml.Node, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[
    int, int
]:
    """``(values, depth)`` of ``node`` with its aliases expanded (shared nodes counted once
    per use, computed once); raises :class:`ConfigError` for a duplicate key, a recursive
    alias, or a document too large or too deep."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise ConfigError(f"an alias refers to itself at line {node.start_mark.line + 1}")
    active.add(key)
    size, depth = 1, 0
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            children += [key_node, value_node]
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            line, ident = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
            if ident in seen:
                raise ConfigError(
                    f"duplicate key {key_node.value!r} at lines {seen[ident]} and {line}: a key "
                    "may appear once in a mapping (the second would silently replace the first)"
                )
            seen[ident] = line
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    for child in children:
        child_size, child_depth = _check_nodes(child, memo, active)
        size, depth = size + child_size, max(depth, child_depth + 1)
        if size > YAML_MAX_VALUES:
            raise ConfigError(
                f"the YAML expands to more than {YAML_MAX_VALUES:,} values through its aliases "
                "(&name / *name); write the values out"
            )
        if depth > YAML_MAX_DEPTH:
            raise ConfigError(f"the YAML nests more than {YAML_MAX_DEPTH} levels deep")
    active.discard(key)
    memo[key] = (size, depth)
    return size, depth


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` (no tag can run code) that also refuses duplicate keys, alias
    bombs and deep nesting. Raises :class:`ConfigError` with one line saying what is wrong."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_problem(exc)) from None
    except RecursionError:
        raise ConfigError(f"the YAML nests more than {YAML_MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()


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

    def stage_fingerprints(self) -> list[str]:
        """A hash per stage of everything its weights depend on: the seed, the task, the data
        settings, the stage's place, name and fields (with its training settings), the entries
        of the models it uses or trains, and the fingerprints of the stages that trained those
        models before it. ``--resume`` keeps the finished stages whose hash is unchanged.

        Left out: what changes no weight (``data.num_workers``, ``train.log_with``) and where
        the data lies (``data.dir``: the data's content is checked on its own)."""
        common = {
            "seed": self.seed,
            "task": self.task,
            "data": self.data.model_dump(mode="json", exclude={"dir", "num_workers"}),
        }
        trained_by: dict[str, str] = {}
        prints: list[str] = []
        for index, (spec, name) in enumerate(zip(self.stages, self.stage_names(), strict=True)):
            fields = spec.model_dump(mode="json")
            fields["train"].pop("log_with", None)
            models = sorted({*spec.uses(), *spec.produces()})
            content = {
                **common,
                "stage": [index, name, fields],
                "models": {
                    m: [self.models[m].model_dump(mode="json"), trained_by.get(m)] for m in models
                },
            }
            text = json.dumps(content, sort_keys=True, default=str)
            prints.append(hashlib.sha256(text.encode()).hexdigest()[:16])
            trained_by.update(dict.fromkeys(spec.produces(), prints[-1]))
        return prints

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


def recipe_changes(old: Any, new: Any, where: str = "") -> list[str]:
    """``"PATH: OLD -> NEW"`` for each field that differs between two raw recipes."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in [*old, *(k for k in new if k not in old)]
            for change in recipe_changes(
                old.get(key), new.get(key), f"{where}.{key}" if where else str(key)
            )
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        pairs = enumerate(zip(old, new, strict=True))
        return [c for i, (a, b) in pairs for c in recipe_changes(a, b, f"{where}.{i}")]
    if old == new:
        return []
    return [f"{where or 'recipe'}: {format_value(old)} -> {format_value(new)}"]


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
        value = load_yaml(text) if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"--set {assignment!r}: {exc}") from None
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
        where = ".".join(parts[:-1])
        raise ConfigError(f"--set {assignment!r}: {where} is a value, not a section")


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
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
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
    _check_integers(raw, "")
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
        problem = name_problem(name)
        if problem is not None:
            raise ConfigError(f"models: the model name {format_value(name)} {problem}")
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
    if stage.get("train") is not None and not isinstance(stage["train"], dict):
        raise ConfigError(
            f"{where}.train: must be a mapping of training settings (e.g. {{epochs: 5}}), got "
            f"{format_value(stage['train'])}"
        )
    if isinstance(stage.get("train"), dict):
        overrides = deep_merge(stage["train"], overrides)
    merged = deep_merge(train_raw, overrides)
    try:
        train = TrainConfig.model_validate(merged)
    except ValidationError as exc:
        rename = {k: f"{where}.{k}" for k in overrides}
        rename.update({k: f"train.{k}" for k in TRAIN_FIELDS if k not in overrides})
        raise ConfigError(validation_message(exc, TrainConfig, where, rename=rename)) from None
    spec = _validate(spec_cls, {**own, "train": train}, where)
    for field_name, model_name in spec.references():
        if model_name not in models:
            raise ConfigError(
                f"{where}.{field_name}: unknown model {model_name!r}"
                f"{did_you_mean(model_name, models)}; models defined: {', '.join(models)}"
            )
    return spec


def _check_integers(value: Any, where: str) -> None:
    """Refuse integers beyond int64 anywhere in the recipe, naming the field."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_integers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_integers(item, f"{where}.{index}")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        raise ConfigError(
            f"{where}: {format_value(value)} is too large; integers must lie within "
            f"±{INT_MAX} (2**63 - 1)"
        )


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
