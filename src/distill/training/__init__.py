"""Training: the loop (:class:`Trainer`), optimizers and schedules, evaluation, epoch
checkpoints, processes and stop signals. It runs any :class:`~distill.methods.Distiller` on
any task; nothing here knows a method by name."""

from __future__ import annotations

from .checkpoint import EpochCheckpoints, rng_state, set_rng_state
from .distributed import DataParallel, check_processes, get_accelerator, trained_members
from .evaluate import evaluate
from .loop import FitResult, Trainer
from .optim import OPTIMIZERS, SCHEDULES, Optimizers, lr_factor
from .signals import StopSignals, TrainingInterrupted, check_finite

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "DataParallel",
    "EpochCheckpoints",
    "FitResult",
    "Optimizers",
    "StopSignals",
    "Trainer",
    "TrainingInterrupted",
    "check_finite",
    "check_processes",
    "evaluate",
    "get_accelerator",
    "lr_factor",
    "rng_state",
    "set_rng_state",
    "trained_members",
]
