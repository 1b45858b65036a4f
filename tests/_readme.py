"""Reading and running the README's code blocks (the README stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import distill
from distill.data import load_data
from distill.models import create

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def code_after(marker: str, language: str = "python") -> str:
    """The first ``language`` code block after ``marker`` in the README."""
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, README.index(marker))
    assert match, f"no {language} block after {marker}"
    return match.group(1)


def run_snippet(marker: str, **names: object) -> list[tuple[str, int]]:
    """Run a README snippet in the namespace of the README's KD example, with a fit() that
    does one step (the snippets only need to be right, not to train); return the
    ``(method class, epochs)`` of every fit() call."""
    data = load_data("digits", subset=200)
    calls: list[tuple[str, int]] = []

    def fit(method: nn.Module, epochs: int) -> None:
        calls.append((type(method).__name__, epochs))
        x, y = next(iter(DataLoader(data.train, batch_size=16)))
        method(x, y).loss.backward()

    torch.manual_seed(0)
    namespace = {
        "torch": torch,
        "DataLoader": DataLoader,
        "distill": distill,
        "create": create,
        "data": data,
        "teacher": create("resnet8", num_classes=10, in_channels=1),
        "fit": fit,
        **names,
    }
    exec(compile(code_after(marker), "README.md", "exec"), namespace)  # noqa: S102
    return calls
