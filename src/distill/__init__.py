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
from .methods import DML, KD, METHODS, TAKD, Distiller, Output, Supervised, assistant_ladder
from .methods.fitnets import FitNets
from .methods.fsp import FSP
from .taps import Taps
from .trainer import evaluate

__version__ = "0.1.0"

__all__ = [
    "DML",
    "KD",
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Distiller",
    "DistillError",
    "FSP",
    "FitNets",
    "Output",
    "Taps",
    "Supervised",
    "TAKD",
    "assistant_ladder",
    "evaluate",
    "kd_loss",
    "mutual_loss",
    "__version__",
]
