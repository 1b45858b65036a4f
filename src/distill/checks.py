"""Argument rules shared by losses, methods and recipes: one copy of each.

A rule is a function returning what is wrong with a value (``None`` when it is fine). It is
used two ways: the ``check_*`` functions raise :class:`~distill.errors.ConfigError` (a
``ValueError``) naming the argument, the value and what would be right, in plain code; the
pydantic types (:data:`Temperature`, :data:`Weight`, ...) apply the same rules to recipe
fields, whose loader adds the field's dotted name and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator
from torch import nn

from .errors import ConfigError

Rule = Callable[[Any], "str | None"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def positive_problem(value: Any) -> str | None:
    """A finite number greater than 0 (a temperature, an exponent, an epsilon)."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number <= 0:
        return "must be a finite number greater than 0"
    return None


def nonnegative_problem(value: Any) -> str | None:
    """A finite number greater than or equal to 0 (a loss weight)."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        return "must be a finite number greater than or equal to 0"
    return None


def fraction_problem(value: Any) -> str | None:
    """A number in [0, 1] (a weight between two terms, a mixing coefficient)."""
    number = _number(value)
    if number is None or not 0.0 <= number <= 1.0:
        return "must be in [0, 1]"
    return None


#: Model and stage names become file and folder names under the run folder
#: (``checkpoints/NAME.pt``, ``models/NAME/``): ASCII letters, digits, ``_`` and ``-``, not
#: starting with ``-``, at most :data:`NAME_MAX` characters. So no name is absolute, holds a
#: ``/`` or ``..``, is empty or too long for a file system, or reads as a command-line option.
NAME_MAX = 64
_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_-]{{0,{NAME_MAX - 1}}}")


def name_problem(value: Any) -> str | None:
    """A model or stage name (see :data:`NAME_MAX`)."""
    if not isinstance(value, str):
        return "must be a name (a string)"
    if len(value) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters long (it names files), got {len(value)}"
    if not _NAME.fullmatch(value):
        return (
            "must be made of ASCII letters, digits, '_' and '-' (not starting with '-'), as it "
            "names files in the run folder"
        )
    return None


def _check(rule: Rule, value: Any, name: str) -> float:
    problem = rule(value)
    if problem is not None:
        raise ConfigError(f"{name} {problem}, got {value!r}")
    return float(value)


def check_positive(value: float, name: str) -> float:
    """``value`` as a float; :class:`ConfigError` unless it is a finite number > 0."""
    return _check(positive_problem, value, name)


def check_temperature(value: float, name: str = "temperature") -> float:
    """A softmax temperature: ``value`` as a float; :class:`ConfigError` unless it is a
    finite number > 0."""
    return _check(positive_problem, value, name)


def check_nonnegative(value: float, name: str) -> float:
    """``value`` as a float; :class:`ConfigError` unless it is a finite number >= 0."""
    return _check(nonnegative_problem, value, name)


def check_fraction(value: float, name: str = "alpha") -> float:
    """``value`` as a float; :class:`ConfigError` unless it is a number in [0, 1]."""
    return _check(fraction_problem, value, name)


def check_distinct_modules(modules: list[nn.Module], what: str) -> None:
    """No module may appear twice among the models of one method: a student cannot be its own
    teacher, and a chain or cohort cannot hold one model twice."""
    if len({id(m) for m in modules}) != len(modules):
        raise ConfigError(f"{what} cannot hold the same module twice: a model cannot teach itself")


def _validator(rule: Rule) -> AfterValidator:
    def validate(value: Any) -> Any:
        problem = rule(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


#: A recipe field holding a temperature (pydantic type).
Temperature = Annotated[float, _validator(positive_problem)]
#: A recipe field holding a weight in [0, 1] (pydantic type).
Weight = Annotated[float, _validator(fraction_problem)]
#: A recipe field holding a loss weight >= 0 (pydantic type).
LossWeight = Annotated[float, _validator(nonnegative_problem)]
#: A recipe field holding a number > 0 (pydantic type).
Positive = Annotated[float, _validator(positive_problem)]
#: A recipe field holding a model or stage name (pydantic type; see :data:`NAME_MAX`).
Name = Annotated[str, _validator(name_problem)]
