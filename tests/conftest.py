"""Shared fixtures: tiny recipes on scikit-learn's digits (no download, seconds to run)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import torch

# The tests train tiny models, for which one thread is faster than several (and the
# subprocesses they start inherit the setting).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

TINY_RECIPE: dict[str, Any] = {
    "seed": 0,
    "data": {"name": "digits", "subset": 300, "batch_size": 32},
    "models": {
        "teacher": {"arch": "cnn-4"},
        "student": {"arch": "cnn-2"},
        "student_kd": {"arch": "cnn-2"},
    },
    "train": {
        "epochs": 2,
        "optimizer": {"name": "sgd", "lr": 0.05},
        "schedule": {"name": "cosine"},
    },
    "stages": [
        {"method": "train", "model": "teacher"},
        {"method": "train", "model": "student"},
        {
            "method": "kd",
            "teacher": "teacher",
            "student": "student_kd",
            "temperature": 4.0,
            "alpha": 0.9,
        },
    ],
}


@pytest.fixture
def tiny_recipe() -> dict[str, Any]:
    """A 3-stage recipe (teacher, student alone, student with KD) that runs in seconds."""
    return copy.deepcopy(TINY_RECIPE)
