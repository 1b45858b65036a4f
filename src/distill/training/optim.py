"""Optimizers and learning-rate schedules by name (one registry each), and the per-group
optimizer set the training loop steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..config import OptimizerConfig, ScheduleConfig, TrainConfig
from ..errors import ConfigError, DistillError

OptimizerFactory = Callable[[list[nn.Parameter], OptimizerConfig], torch.optim.Optimizer]

OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov
    ),
    "adamw": lambda params, c: torch.optim.AdamW(
        params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay
    ),
    "adam": lambda params, c: torch.optim.Adam(
        params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay
    ),
}
"""Optimizer name -> ``factory(parameters, config)``."""


def _cosine(progress: float, epoch: float, c: ScheduleConfig) -> float:
    return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(progress: float, epoch: float, c: ScheduleConfig) -> float:
    if c.milestones:
        return c.gamma ** sum(1 for m in c.milestones if epoch >= m)
    return c.gamma ** int(epoch // c.step_size)


def _constant(progress: float, epoch: float, c: ScheduleConfig) -> float:
    return 1.0


#: Schedules after a linear warm-up: ``factor(progress after the warm-up in [0, 1], epoch,
#: config)``. ``onecycle`` has a warm-up of its own (:func:`lr_factor`).
SCHEDULES: dict[str, Callable[[float, float, ScheduleConfig], float]] = {
    "cosine": _cosine,
    "step": _step,
    "constant": _constant,
}


def _onecycle(c: ScheduleConfig, step: int, steps_per_epoch: int, total: int) -> float:
    warm = c.warmup_epochs * steps_per_epoch or 0.3 * total
    low = 1.0 / c.div_factor
    if step < warm:
        return low + (1 - low) * step / warm
    progress = min(1.0, (step - warm) / max(1.0, total - warm))
    final = low / c.final_div_factor
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor(c: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps (see :class:`ScheduleConfig`)."""
    total = max(1, steps_per_epoch * epochs)
    if c.name == "onecycle":
        return _onecycle(c, step, steps_per_epoch, total)
    warm = c.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / (warm + 1)
    progress = min(1.0, (step - warm) / max(1.0, total - warm))
    return SCHEDULES[c.name](progress, step / steps_per_epoch, c)


class Optimizers:
    """One optimizer and schedule per parameter group, and one loss scaler (fp16).

    Args:
        groups: parameters by group name (:meth:`Distiller.optimizer_groups
            <distill.methods.Distiller.optimizer_groups>`); empty groups are dropped.
        config: the phase's training settings.
        steps_per_epoch: optimizer steps per epoch (for the schedules).
        device: where training runs (the scaler's device type).
    """

    def __init__(
        self,
        groups: dict[str, list[nn.Parameter]],
        config: TrainConfig,
        steps_per_epoch: int,
        device: torch.device,
    ) -> None:
        self.groups = {k: v for k, v in groups.items() if v}
        if not self.groups:
            raise DistillError("the method has no trainable parameters")
        self.config = config
        make = OPTIMIZERS[config.optimizer.name]
        try:
            self.optimizers = {k: make(v, config.optimizer) for k, v in self.groups.items()}
        except ValueError as exc:  # a combination of settings torch refuses
            raise ConfigError(f"optimizer {config.optimizer.name}: {exc}") from None

        def factor(step: int) -> float:
            return lr_factor(config.schedule, step, steps_per_epoch, config.epochs)

        self.schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in self.optimizers.items()
        }
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    @property
    def lr(self) -> float:
        """The first group's current learning rate."""
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled under fp16)."""
        self.scaler.scale(loss).backward()

    def step(self, names: Iterable[str] | None = None) -> None:
        """One optimizer step of the groups ``names`` (default: all): gradients clipped per
        group (one cohort member's norm must not clip another's), then each group's
        optimizer and schedule step and its gradients are cleared."""
        names = list(self.optimizers if names is None else names)
        clip = self.config.clip_grad_norm
        for name in names:
            if clip is not None:
                self.scaler.unscale_(self.optimizers[name])
                torch.nn.utils.clip_grad_norm_(self.groups[name], clip)
        for name in names:
            self.scaler.step(self.optimizers[name])
        self.scaler.update()
        for name in names:
            self.optimizers[name].zero_grad(set_to_none=True)
            self.schedulers[name].step()

    def zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][k])
            self.schedulers[k].load_state_dict(state["schedulers"][k])
        self.scaler.load_state_dict(state["scaler"])
