"""Classic knowledge distillation (Hinton, Vinyals and Dean 2015)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..cache import TeacherCache
from ..losses import kd_loss
from .base import (
    Distiller,
    Output,
    Phase,
    StageContext,
    TeacherCacheFields,
    TeacherStudentSpec,
    freeze,
    logits_of,
)


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
        teacher_precision: ``fp32``, or ``bf16``/``fp16`` to run only the teacher under
            autocast (its logits are cast back to float32).

    With a :class:`~distill.cache.TeacherCache` attached (``method.cache = cache``) and
    batches that carry their cache keys (``method(x, y, keys)``), the teacher runs only for
    samples (views) it has not seen yet.
    """

    teacher_names = ("teacher",)

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.9,
        *,
        teacher_precision: str = "fp32",
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
        self.cache: TeacherCache | None = None
        self.teacher_precision = teacher_precision
        self.teacher_calls = 0

    def _run_teacher(self, inputs: torch.Tensor) -> torch.Tensor:
        self.teacher_calls += 1
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.teacher_precision)
        with torch.no_grad():
            if dtype is None:
                return logits_of(self.teacher(inputs)).float()
            with torch.autocast(device_type=inputs.device.type, dtype=dtype):
                return logits_of(self.teacher(inputs)).float()

    def teacher_logits(
        self, inputs: torch.Tensor, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The teacher's logits, computed without building a graph (or read from the attached
        :class:`~distill.cache.TeacherCache` when the batch's ``keys`` are given)."""
        if self.cache is not None and keys is not None:
            return self.cache.teacher_logits(keys, inputs, self._run_teacher)
        return self._run_teacher(inputs)

    def epoch_end(self) -> None:
        if self.cache is not None:
            self.cache.flush()

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, keys: torch.Tensor | None = None
    ) -> Output:
        teacher_logits = self.teacher_logits(inputs, keys)
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


class KDStage(TeacherStudentSpec, TeacherCacheFields):
    """``{method: kd, teacher: NAME, student: NAME, temperature: 4.0, alpha: 0.9}``, plus the
    teacher-cache fields of :class:`~distill.methods.base.TeacherCacheFields`
    (``cache: teacher``...)."""

    method: Literal["kd"] = "kd"

    def phases(self, ctx: StageContext) -> list[Phase]:
        def build() -> KD:
            return KD(
                ctx.models[self.teacher],
                ctx.models[self.student],
                self.temperature,
                self.alpha,
                teacher_precision=self.teacher_precision,
            )

        return [
            Phase(
                name="kd",
                build=build,
                trains=[self.student],
                train=self.train,
                cache=self.cache_settings(),
            )
        ]
