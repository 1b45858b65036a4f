"""What stops training: SIGINT (Ctrl-C) and SIGTERM (a scheduler's time limit), stopped
cleanly at a step boundary, and losses that are not finite."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..errors import NonFiniteLossError


class TrainingInterrupted(Exception):  # noqa: N818 - reads as what happened
    """Training stopped on SIGINT or SIGTERM after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only ask training to stop at the next step boundary
    (a second SIGINT interrupts at once). Outside the main thread it does nothing.

    Attributes:
        received: the signal number received, or ``None``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    @property
    def name(self) -> str:
        """The received signal's name (``SIGINT``)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class NonFiniteGuard:
    """Watches training losses for NaN and infinity.

    A step whose loss is not finite has its gradients dropped (``drop_gradients``, as fp16
    loss scaling does); up to ``max_bad_steps`` are skipped that way, and the next one stops
    training with a message naming the epoch, the step, the loss parts and the usual causes.
    ``config`` is the phase's :class:`~distill.config.TrainConfig` (``max_bad_steps``, and the
    learning rate the message quotes).
    """

    def __init__(self, config: Any, drop_gradients: Callable[[], None], desc: str) -> None:
        self.max_bad_steps = config.max_bad_steps
        self.drop_gradients = drop_gradients
        self.desc = desc
        self.config = config
        self.bad_steps = 0

    def ok(self, out: Any, epoch: int, step: int) -> bool:
        """Whether ``out.loss`` (an :class:`~distill.methods.Output`'s) is finite."""
        if torch.isfinite(out.loss):
            return True
        self.bad_steps += 1
        if self.bad_steps > self.max_bad_steps:
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in out.parts.items())
            raise NonFiniteLossError(
                f"{self.desc}: the loss is {float(out.loss)} at epoch {epoch + 1}, step "
                f"{step + 1} (parts: {parts}). Likely causes: a learning rate too high "
                f"(optimizer.lr={self.config.optimizer.lr}), an extreme temperature, or fp16 "
                "overflow (try bf16). The last whole checkpoint is kept; set "
                "train.max_bad_steps to skip a few bad steps instead."
            )
        self.drop_gradients()
        return False
