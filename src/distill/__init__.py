"""distill: knowledge distillation for PyTorch.

Train a small, fast *student* network to mimic a large, accurate *teacher*::

    import distill
    method = distill.KD(teacher, student, temperature=4.0, alpha=0.9)
    out = method(x, y)          # Output(loss, parts, logits)
    out.loss.backward()
"""

from __future__ import annotations

from .errors import CheckpointError, ConfigError, DataError, DistillError
from .losses import kd_loss
from .methods import KD, METHODS, Distiller, Output, Supervised
from .trainer import evaluate

__version__ = "0.1.0"

__all__ = [
    "KD",
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Distiller",
    "DistillError",
    "Output",
    "Supervised",
    "evaluate",
    "kd_loss",
    "__version__",
]
