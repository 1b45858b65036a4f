"""Comparing the final weights of two runs (the resume, crash and multi-process tests)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch


def final_weights(
    out: Path, names: Iterable[str] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """``{model: state_dict}`` from a run's ``checkpoints/<model>.pt``, for every model or
    only ``names``."""
    paths = (
        sorted((out / "checkpoints").glob("*.pt"))
        if names is None
        else [out / "checkpoints" / f"{name}.pt" for name in names]
    )
    return {p.stem: torch.load(p, weights_only=True)["state_dict"] for p in paths}


def assert_same_weights(
    want: dict[str, dict[str, torch.Tensor]],
    got: dict[str, dict[str, torch.Tensor]],
    *where: object,
    atol: float | None = None,
) -> None:
    """Every tensor of ``want`` equals ``got``'s (``torch.equal``), or with ``atol`` is close
    to it (``torch.allclose`` with that ``atol`` and the default ``rtol``). ``where`` goes into
    the failure message before the model and key."""
    for model, state in want.items():
        for key, value in state.items():
            other = got[model][key]
            same = (
                torch.equal(value, other)
                if atol is None
                else torch.allclose(value, other, atol=atol)
            )
            assert same, (*where, model, key)
