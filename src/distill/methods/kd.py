"""Classic knowledge distillation (Hinton, Vinyals and Dean 2015)."""

from __future__ import annotations

from typing import Literal

from torch import nn

from ..checks import check_distinct_modules, check_fraction, check_temperature
from ..losses import kd_loss
from ..tasks import Batch, Task
from ..teachers import Teacher, as_teacher
from .base import (
    DemoEntry,
    Distiller,
    KDFields,
    Output,
    Phase,
    StageContext,
    TeacherFields,
    TeacherStudentSpec,
)


class KD(Distiller):
    r"""Soft-label distillation from a frozen teacher.

    .. math::
        \mathcal{L} = (1-\alpha)\,\mathrm{CE}(s, y)
                    + \alpha\,T^2\,\mathrm{KL}(\mathrm{softmax}(t/T)\,\|\,\mathrm{softmax}(s/T))

    Parts: ``ce`` = (1−α)·CE and ``kd`` = α·T²·KL. Both terms are means over the positions
    where the task applies losses (the batch for images; the labelled tokens for a causal LM).

    Args:
        teacher: a :class:`~distill.teachers.Teacher`, or any trained module (wrapped in one:
            eval mode, frozen, run under ``torch.no_grad()``).
        student: the module to train; its logits must have the teacher's shape.
        temperature: ``T > 0`` (paper and CIFAR benchmarks: 4).
        alpha: weight of the soft term, in [0, 1] (CIFAR benchmarks: 0.9).
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.9,
        *,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        self.temperature = check_temperature(temperature)
        self.alpha = check_fraction(alpha)
        self.teacher = as_teacher(teacher, self.task)
        check_distinct_modules([self.teacher.module, student], "KD")
        self.student = student.requires_grad_(True)

    def forward(self, batch: Batch) -> Output:
        teacher_logits = self.teacher(batch)
        logits = self.task.logits(self.student, batch)
        if logits.shape != teacher_logits.shape:
            raise ValueError(
                "teacher and student outputs differ in shape: teacher "
                f"{tuple(teacher_logits.shape)}, student {tuple(logits.shape)}; both must "
                "predict the same classes"
            )
        ce = self.task.supervised_loss(logits, batch)
        soft = kd_loss(logits, teacher_logits, self.temperature, mask=self.task.positions(batch))
        parts = {"ce": (1 - self.alpha) * ce, "kd": self.alpha * soft}
        loss = parts["ce"] + parts["kd"]
        return Output(loss=loss, parts={k: v.detach() for k, v in parts.items()}, logits=logits)


class KDStage(TeacherFields, KDFields, TeacherStudentSpec):
    """``{method: kd, teacher: NAME, student: NAME, temperature: 4.0, alpha: 0.9}``, plus the
    teacher fields of :class:`~distill.methods.base.TeacherFields` (``cache: teacher``...)."""

    method: Literal["kd"] = "kd"

    demo = DemoEntry(
        student="student_kd",
        stage={
            "method": "kd",
            "teacher": "teacher",
            "student": "student_kd",
            "temperature": 4.0,
            "alpha": 0.9,
        },
    )

    def build(self, ctx: StageContext) -> KD:
        """The KD Distiller on ``ctx``'s models."""
        return KD(
            ctx.teacher(self.teacher, self, self.temperature),
            ctx.models[self.student],
            self.temperature,
            self.alpha,
            task=ctx.task,
        )

    def phases(self, ctx: StageContext) -> list[Phase]:
        return [Phase("kd", lambda: self.build(ctx), [self.student], self.train)]
