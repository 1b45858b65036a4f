"""Errors a user can act on.

Every error that the command line turns into exit code 2 and a one-line message derives from
:class:`DistillError`. Its message names what was wrong, the value given and what would be right.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """A problem with the user's input (recipe, data, checkpoint, arguments)."""


class ConfigError(DistillError, ValueError):
    """An invalid recipe field or argument."""


class DataError(DistillError):
    """Missing or malformed data."""


class CheckpointError(DistillError):
    """A checkpoint that is missing, truncated or belongs to another model."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates closest to ``name`` (for "did you mean" hints)."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    return found


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A hint like ``" (did you mean 'resnet20'?)"``, or an empty string."""
    found = closest(name, candidates, n=1)
    return f" (did you mean {found[0]!r}?)" if found else ""


class NonFiniteLossError(DistillError):
    """The loss, the trained weights or a validation metric became NaN or infinite."""


class DiskFullError(DistillError):
    """No space was left on the device (or the quota was reached) while writing a file."""


class Interrupted(KeyboardInterrupt):  # noqa: N818 - reads as what happened
    """A stop signal (SIGINT, SIGTERM) ended the command; ``signum`` says which. A
    ``KeyboardInterrupt``, so that no ``except Exception`` swallows it."""

    #: Whether a checkpoint was written at the stop (training stops at a step boundary).
    checkpointed = False

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
