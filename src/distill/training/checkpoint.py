"""Epoch checkpoints of a phase: everything needed to continue training exactly.

A phase's checkpoints live in one directory as ``epoch_NNNN.pt`` (written after epoch N) and
``epoch_NNNN_step_SSSSSS.pt`` (written when a stop signal arrived after step S of the epoch
following epoch N). Each is written atomically (:func:`distill.files.atomic_save`), so the
newest one on disk is always whole; only the newest ``keep`` are kept, so a damaged newest
checkpoint falls back to the one before it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_save, safe_load

EPOCH_FORMAT = "distill-epoch/1"


def rng_state() -> dict[str, Any]:
    """Every RNG state that training consumes, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npk = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npk["key"].numpy().astype(np.uint32),
            npk["pos"],
            npk["has_gauss"],
            npk["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

class EpochCheckpoints:
    """The epoch checkpoints of one phase in ``directory`` (``None``: none are written).

    Args:
        directory: where the checkpoints go.
        keep: how many to keep (≥ 2 lets a damaged newest checkpoint fall back to the one
            before).
        writer: whether this process writes (only the main one of several does).
        warn: where warnings about skipped checkpoints go.
    """

    def __init__(
        self,
        directory: str | Path | None,
        *,
        keep: int = 2,
        writer: bool = True,
        warn: Callable[[str], None] = print,
    ) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.keep = max(1, keep)
        self.writer = writer
        self.warn = warn

    def paths(self) -> list[Path]:
        """Epoch checkpoints on disk, newest first."""
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("epoch_*.pt"), reverse=True)

    def save(self, state: dict[str, Any], epoch: int, step: int | None = None) -> None:
        """Write ``state`` as the checkpoint after ``epoch`` epochs (and ``step`` batches of
        the next one), then drop all but the newest ``keep``."""
        if self.directory is None or not self.writer:
            return
        suffix = "" if step is None else f"_step_{step:06d}"
        path = self.directory / f"epoch_{epoch:04d}{suffix}.pt"
        atomic_save({"format": EPOCH_FORMAT, **state}, path)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)

    def latest(self, phase: str = "the phase") -> dict[str, Any] | None:
        """The newest whole epoch checkpoint; a damaged one is reported and skipped, and when
        none can be read, that ``phase`` restarts from epoch 1 is said."""
        paths = self.paths()
        for path in paths:
            try:
                state = safe_load(path)
            except CheckpointError as exc:
                self.warn(f"warning: {exc}; falling back to the previous checkpoint")
                continue
            if not isinstance(state, dict) or state.get("format") != EPOCH_FORMAT:
                self.warn(f"warning: {path} is not an epoch checkpoint; skipped")
                continue
            return state
        if paths:
            self.warn(f"warning: no epoch checkpoint can be read; restarting {phase} from epoch 1")
        return None
