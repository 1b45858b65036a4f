"""distill: knowledge distillation for PyTorch.

Train a small, fast *student* network to mimic a large, accurate *teacher*::

    import distill
    method = distill.KD(teacher, student, temperature=4.0, alpha=0.9)
    out = method(x, y)          # Output(loss, parts, logits)
    out.loss.backward()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, ConfigError, DataError, DistillError

if TYPE_CHECKING:
    from .losses import kd_loss, mutual_loss
    from .methods import (
        AT,
        CRD,
        DIST,
        DKD,
        DML,
        FSP,
        KD,
        METHODS,
        PKT,
        RKD,
        TAKD,
        Distiller,
        FitNets,
        Output,
        Progress,
        Supervised,
        assistant_ladder,
    )
    from .taps import Taps
    from .tasks import TASKS, Task
    from .teachers import Teacher
    from .training import Trainer, evaluate

__version__ = "0.1.0"

# The names below are imported on first use (PEP 562), so that ``import distill.cli`` does not
# import torch: the command handles Ctrl-C from its first line on.
_EXPORTS = {
    "losses": ["kd_loss", "mutual_loss"],
    "methods": [
        "AT", "CRD", "DIST", "DKD", "DML", "FSP", "KD", "METHODS", "PKT", "RKD", "TAKD",
        "Distiller", "FitNets", "Output", "Progress", "Supervised", "assistant_ladder",
    ],
    "taps": ["Taps"],
    "tasks": ["TASKS", "Task"],
    "teachers": ["Teacher"],
    "training": ["Trainer", "evaluate"],
}
_LAZY = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    try:  # a submodule: ``distill.losses`` after a bare ``import distill``
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "AT",
    "CRD",
    "DIST",
    "DKD",
    "DML",
    "KD",
    "METHODS",
    "PKT",
    "RKD",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Distiller",
    "DistillError",
    "FSP",
    "FitNets",
    "Output",
    "Progress",
    "TASKS",
    "Taps",
    "Task",
    "Teacher",
    "Trainer",
    "Supervised",
    "TAKD",
    "assistant_ladder",
    "evaluate",
    "kd_loss",
    "mutual_loss",
    "__version__",
]
