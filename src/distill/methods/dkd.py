"""Decoupled knowledge distillation (DKD; Zhao, Cui, Song, Qiu and Liang, CVPR 2022).

KD's loss splits into a target-class term (TCKD) and a non-target-class term (NCKD) whose
weight KD ties to the teacher's confidence; DKD weights them freely (see
:mod:`distill.losses.dkd`), and warms the two terms up linearly over the first epochs::

    dkd = DKD(teacher, student)                 # α = 1, β = 8, T = 4, 20 warm-up epochs
    out = dkd(x, y)                             # parts: {"ce", "tckd", "nckd"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..checks import (
    LossWeight,
    Temperature,
    check_nonnegative,
    check_temperature,
)
from ..errors import ConfigError
from ..losses.dkd import dkd_terms
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._logits import check_standardize, distillation_logits, match_classes
from .base import (
    DemoEntry,
    Distiller,
    Output,
    Phase,
    StageContext,
    TeacherFields,
    TeacherStudentSpec,
)


class DKD(Distiller):
    r"""Decoupled KD: cross-entropy plus the warmed-up, reweighted TCKD and NCKD terms.

    .. math::
        \mathcal{L} = \mathrm{CE}(s, y)
            + \min\Big(\frac{e + 1}{E_w}, 1\Big)\,
              \big(\alpha\,\mathrm{TCKD}(s, t) + \beta\,\mathrm{NCKD}(s, t)\big)

    with TCKD and NCKD at temperature T, each times T² and averaged over the batch
    (:func:`~distill.losses.dkd.dkd_terms`), :math:`e` the epoch being trained (from 0, read
    from ``self.progress``) and :math:`E_w` = ``warmup_epochs``. The warm-up factor is
    mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch *index*: constant within an
    epoch, 1/20 in the first one, 1 from the 20th on (not a per-step ramp). ``warmup_epochs=0``
    turns the warm-up off.

    Defaults are mdistiller's CIFAR-100 ones for resnet32x4 → resnet8x4: α = 1, β = 8, T = 4,
    20 warm-up epochs of 240 (it tunes β per pair: 6 for wrn-40-2 → wrn-16-2, 2 for
    resnet56 → resnet20; ImageNet: β = 0.5, T = 1, 1 warm-up epoch). With a much shorter
    schedule, scale the warm-up with it (20 of 240 epochs is the first 8%).

    ``standardize=True`` applies logit standardisation (Sun et al., CVPR 2024;
    :func:`~distill.losses.standardize.standardize`) to both networks' logits before TCKD and
    NCKD (not before CE): each sample's logits become their Z-score (sample standard
    deviation, ε = 1e-7), then are divided by T as usual. The authors pair it with DKD with
    α and β times 9 (α = 9, β = 72), T = 2 and the warm-up kept; these are not applied for
    you.

    Parts: ``ce``, ``tckd`` (warm-up × α × TCKD) and ``nckd`` (warm-up × β × NCKD). For a
    causal LM, every term is a mean over the labelled tokens.

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen).
        student: the module to train; its logits must have the teacher's shape.
        alpha: weight of TCKD, ≥ 0.
        beta: weight of NCKD, ≥ 0.
        temperature: ``T > 0``.
        warmup_epochs: epochs over which the KD terms' weight grows to 1 (≥ 0; 0: none).
        standardize: Z-score both networks' logits before the DKD terms.
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        *,
        warmup_epochs: int = 20,
        standardize: bool = False,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        self.alpha = check_nonnegative(alpha, "alpha")
        self.beta = check_nonnegative(beta, "beta")
        self.temperature = check_temperature(temperature)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or (
            warmup_epochs < 0
        ):
            raise ConfigError(f"warmup_epochs must be an integer >= 0, got {warmup_epochs!r}")
        self.warmup_epochs = warmup_epochs
        self.standardize = bool(standardize)
        self.set_pair(teacher, student)

    def warmup(self) -> float:
        """The KD terms' weight in the current epoch: ``min((epoch + 1) / warmup_epochs, 1)``."""
        if self.warmup_epochs == 0:
            return 1.0
        return min((self.progress.epoch + 1) / self.warmup_epochs, 1.0)

    def forward(self, batch: Batch) -> Output:
        teacher_logits = self.teacher(batch)
        logits = self.task.logits(self.student, batch)
        s, t = match_classes(logits, teacher_logits)
        s, t = distillation_logits(s, t, self.standardize)
        tckd, nckd = dkd_terms(
            s, t, self.task.targets(batch), self.temperature, mask=self.task.positions(batch)
        )
        factor = self.warmup()
        parts = {
            "ce": self.task.supervised_loss(logits, batch),
            "tckd": factor * self.alpha * tckd,
            "nckd": factor * self.beta * nckd,
        }
        return Output.from_parts(parts, logits)


class DKDStage(TeacherStudentSpec, TeacherFields):
    """``{method: dkd, teacher, student, alpha: 1.0, beta: 8.0, temperature: 4.0,
    warmup_epochs: 20, standardize: false}``, plus the teacher fields of
    :class:`~distill.methods.base.TeacherFields` (``cache: teacher``...). ``standardize`` needs
    the teacher's logits themselves, so it cannot go with ``cache_topk``."""

    method: Literal["dkd"] = "dkd"
    alpha: LossWeight = 1.0
    beta: LossWeight = 8.0
    temperature: Temperature = 4.0
    warmup_epochs: int = Field(20, ge=0)
    standardize: bool = False

    # 8 demo epochs: the warm-up scaled as on CIFAR (20 of 240 epochs), i.e. none.
    demo = DemoEntry(
        student="student_dkd",
        stage={
            "method": "dkd",
            "teacher": "teacher",
            "student": "student_dkd",
            "alpha": 1.0,
            "beta": 8.0,
            "temperature": 4.0,
            "warmup_epochs": 1,
        },
    )

    def check(self, ctx: StageContext) -> None:
        check_standardize(self)

    def build(self, ctx: StageContext) -> DKD:
        """The DKD Distiller on ``ctx``'s models."""
        return DKD(
            ctx.teacher(self.teacher, self, self.temperature),
            ctx.models[self.student],
            self.alpha,
            self.beta,
            self.temperature,
            warmup_epochs=self.warmup_epochs,
            standardize=self.standardize,
            task=ctx.task,
        )

    def phases(self, ctx: StageContext) -> list[Phase]:
        return [Phase("dkd", lambda: self.build(ctx), [self.student], self.train)]

