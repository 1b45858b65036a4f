"""distill: knowledge distillation for PyTorch.

Train a small, fast *student* network to mimic a large, accurate *teacher*::

    import distill
    method = distill.KD(teacher, student, temperature=4.0, alpha=0.9)
    out = method(x, y)          # Output(loss, parts, logits)
    out.loss.backward()
"""

from __future__ import annotations

from .errors import CheckpointError, ConfigError, DataError, DistillError
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
