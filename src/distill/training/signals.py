"""What stops training: SIGINT (Ctrl-C) and SIGTERM (a scheduler's time limit), stopped
cleanly at a step boundary, and losses that are not finite."""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import Accelerator

from ..errors import Interrupted, NonFiniteLossError
from .distributed import sum_over_processes

#: What usually makes training diverge (said by every non-finite stop).
CAUSES = "a learning rate too high, an extreme temperature, or fp16 overflow (try bf16)"


def _non_finite(value: Any) -> bool:
    """Whether a float, or a floating-point tensor (a sharded one's own part), holds NaN or
    infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    value = value.to_local() if hasattr(value, "to_local") else value  # a DTensor's shard
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(value.isfinite().all())
    )


def check_finite(
    values: Mapping[str, Any], what: str, agree: Callable[[bool], bool] | None = None
) -> None:
    """Raise :class:`NonFiniteLossError` if a floating-point tensor or a float among
    ``values`` (a state dict, or metrics) holds NaN or infinity; ``what`` names them.

    ``agree(found)`` (every process calls it once) says whether any process found one, for
    values that differ between processes (the shards of a sharded model): all of them stop
    together."""
    bad = [key for key, value in values.items() if _non_finite(value)]
    if agree is not None and agree(bool(bad)) and not bad:
        bad = ["the part of them another process holds"]
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise NonFiniteLossError(
            f"{what}: NaN or infinite values in {listed}; nothing of it is kept as a trained "
            f"model. Likely causes: {CAUSES}. The last whole checkpoint is kept"
        )


class TrainingInterrupted(Interrupted):
    """Training stopped on SIGINT or SIGTERM after writing a resumable checkpoint."""

    checkpointed = True


class StopSignals:
    """While active, SIGINT and SIGTERM only ask training to stop at the next step boundary,
    or after the epoch's validation when they come in its last step (a second SIGINT
    interrupts at once). Outside the main thread it does nothing.

    Attributes:
        received: the signal number received, or ``None``.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None and signum == signal.SIGINT:
            message = "stopped by a second SIGINT; the last whole checkpoint is kept"
            raise Interrupted(message, signum)
        self.received = signum

    @property
    def name(self) -> str:
        """The received signal's name (``SIGINT``)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def raise_if_received(self, where: str) -> None:
        """Raise :class:`TrainingInterrupted` if a signal came (call it once a checkpoint is
        on disk)."""
        if self.received is not None:
            raise TrainingInterrupted(
                f"{where}: stopped by {self.name}; a checkpoint was written", self.received
            )

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
    learning rate the message quotes); ``accelerator``, with several processes, lets them
    agree on the weights' check after an epoch.
    """

    def __init__(
        self,
        config: Any,
        drop_gradients: Callable[[], None],
        desc: str,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.max_bad_steps = config.max_bad_steps
        self.drop_gradients = drop_gradients
        self.desc = desc
        self.config = config
        self.bad_steps = 0
        self.agree: Callable[[bool], bool] | None = None
        if accelerator is not None and accelerator.num_processes > 1:

            def agree(found: bool) -> bool:
                flag = torch.tensor([float(found)], device=accelerator.device)
                return bool(sum_over_processes(flag, accelerator).item() > 0)

            self.agree = agree

    def ok(self, out: Any, epoch: int, step: int) -> bool:
        """Whether ``out.loss`` (an :class:`~distill.methods.Output`'s) is finite."""
        if torch.isfinite(out.loss):
            return True
        self.bad_steps += 1
        if self.bad_steps > self.max_bad_steps:
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.parts.items())
            raise NonFiniteLossError(
                f"{self.desc}: the loss is {float(out.loss.detach())} at epoch {epoch + 1}, step "
                f"{step + 1} (parts: {parts}). Likely causes: {CAUSES}; optimizer.lr is "
                f"{self.config.optimizer.lr}. The last whole checkpoint is kept; set "
                "train.max_bad_steps to skip a few bad steps instead"
            )
        self.drop_gradients()
        return False

    def check_epoch(self, method: Any, record: dict[str, Any]) -> None:
        """After an epoch, before its checkpoint: the trained weights (a method's
        ``trainable_state_dict()``) and each model's validation metrics must be finite."""
        after = f"{self.desc}: after epoch {record['epoch']}"
        check_finite(method.trainable_state_dict(), f"{after}, the trained weights", self.agree)
        for name, metrics in record["val"].items():
            check_finite(metrics, f"{after}, the validation metrics of {name!r}")
