"""Classic knowledge distillation (Hinton, Vinyals and Dean 2015)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..losses import kd_loss
from .base import Distiller, Output, Phase, StageContext, StageSpec, freeze, logits_of


class KD(Distiller):
    r"""Soft-label distillation from a frozen teacher.

    .. math::
        \mathcal{L} = (1-\alpha)\,\mathrm{CE}(s, y)
                    + \alpha\,T^2\,\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))

    Parts: ``ce`` = (1−α)·CE and ``kd`` = α·kd_loss. The teacher is put in eval mode, frozen,
    and run under ``torch.no_grad()``.

    Args:
        teacher: any module returning logits ``[N, C]`` (or an output with ``.logits``).
        student: the module to train; same number of classes.
        temperature: ``T > 0`` (paper and CIFAR benchmarks: 4).
        alpha: weight of the soft term, in [0, 1] (CIFAR benchmarks: 0.9).
    """

    teacher_names = ("teacher",)

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.9,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if teacher is student:
            raise ValueError("the student cannot be its own teacher")
        self.teacher = freeze(teacher)
        self.student = student.requires_grad_(True)
        self.temperature = temperature
        self.alpha = alpha

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The teacher's logits, computed without building a graph."""
        with torch.no_grad():
            return logits_of(self.teacher(inputs))

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Output:
        teacher_logits = self.teacher_logits(inputs)
        logits = logits_of(self.student(inputs))
        if logits.shape != teacher_logits.shape:
            raise ValueError(
                "teacher and student outputs differ in shape: teacher "
                f"{tuple(teacher_logits.shape)}, student {tuple(logits.shape)}; both must "
                "predict the same classes"
            )
        ce = F.cross_entropy(logits.float(), targets)
        soft = kd_loss(logits, teacher_logits, self.temperature)
        parts = {"ce": (1 - self.alpha) * ce, "kd": self.alpha * soft}
        loss = parts["ce"] + parts["kd"]
        return Output(loss=loss, parts={k: v.detach() for k, v in parts.items()}, logits=logits)


class KDStage(StageSpec):
    """``{method: kd, teacher: NAME, student: NAME, temperature: 4.0, alpha: 0.9}``."""

    method: Literal["kd"] = "kd"
    teacher: str
    student: str
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)

    def produces(self) -> list[str]:
        return [self.student]

    def uses(self) -> list[str]:
        return [self.teacher]

    def phases(self, ctx: StageContext) -> list[Phase]:
        def build() -> KD:
            return KD(
                ctx.models[self.teacher], ctx.models[self.student], self.temperature, self.alpha
            )

        return [Phase(name="kd", build=build, trains=[self.student], train=self.train)]
