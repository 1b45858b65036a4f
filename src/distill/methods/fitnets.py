"""FitNets: hints for thin deep nets (Romero et al. 2014), as the paper's two steps, run here
as two phases.

Phase 1 (*hints*): the student's layers up to its *guided* layer, plus a regressor ``r``,
learn to reproduce the teacher's *hint* layer: ``hint_loss(r(v_g(x)), u_h(x))``. Phase 2: the
whole student trains with classic KD, starting from the phase-1 weights; the regressor is
dropped. Python API::

    hints = FitNets(teacher, student, x[:8], hint_layer="stages.1", guided_layer="stages.1")
    fit(hints)                    # phase 1: loss = hint_loss; trains student layers up to
                                  # stages.1 and the regressor only
    fit(hints.second_phase())     # phase 2: a KD(teacher, student, temperature, alpha)

Many CIFAR benchmarks run FitNets as one stage (CE + 100·hint); that is not this method.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..adapters import build_adapter
from ..checks import check_fraction, check_temperature
from ..config import merged_train
from ..losses import hint_loss
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._features import FeaturePhase, FeaturePhaseSpec, check_layer, check_overrides, zoo_sections
from .base import DemoEntry, KDFields, Output, Phase, StageContext, TeacherFields
from .kd import KD, KDStage


def middle_layer(model: nn.Module, role: str) -> str:
    """The paper's default hint / guided layer for a zoo model: its middle section,
    ``stages.{k // 2}`` of ``k`` sections (``stages.1`` for ResNets, WRNs and every cnn-N)."""
    sections = zoo_sections(model, role)
    return sections[len(sections) // 2]


class FitNets(FeaturePhase):
    r"""Phase 1 of FitNets: the student's layers up to ``guided_layer`` and a regressor learn
    the teacher's ``hint_layer``.

    .. math::
        \mathcal{L}_\text{hint} = \operatorname{mean}\big(r(v_g(x)) - u_h(x)\big)^2

    Part ``hint``. The regressor is sized by one probe forward on ``sample_batch``
    (:func:`distill.adapters.build_adapter`: the FitNets conv rule for ``[N, C, H, W]``, a
    linear map for ``[N, L, D]`` and ``[N, D]``). The student's forward stops at the guided
    layer, so later layers neither run nor change (BatchNorm statistics included), and only the
    parameters that feed the guided layer are trainable (``requires_grad``) until
    :meth:`release` or :meth:`second_phase`. ``Output.logits`` is an empty ``[N, 0]`` tensor.

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any module; frozen, eval mode, run
            under ``torch.no_grad()`` (up to the hint layer only).
        student: the module to train.
        sample_batch: a batch for the probe (a few items suffice): a dict batch, or an input
            tensor for image classification.
        hint_layer: the teacher's layer, by dotted name. Default (zoo models): the middle
            section, as in the paper.
        guided_layer: the student's layer. Default (zoo models): the middle section.
        regressor_relu: end a conv regressor with ReLU. Default ``None``: when the teacher's
            hint feature is non-negative on the probe batch (it follows a ReLU).
        temperature: phase 2's KD temperature ``T > 0`` (4, as in the CIFAR benchmarks).
        alpha: phase 2's KD weight in [0, 1] (0.9).
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        sample_batch: Batch | torch.Tensor,
        *,
        hint_layer: str | None = None,
        guided_layer: str | None = None,
        regressor_relu: bool | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
        task: str | Task = "classification",
    ) -> None:
        temperature, alpha = check_temperature(temperature), check_fraction(alpha)
        module = teacher.module if isinstance(teacher, Teacher) else teacher
        hint_layer = hint_layer or middle_layer(module, "hint_layer")
        guided_layer = guided_layer or middle_layer(student, "guided_layer")
        check_layer(module, hint_layer, "hint_layer")
        check_layer(student, guided_layer, "guided_layer")
        super().__init__(teacher, student, sample_batch, [guided_layer], [hint_layer], task=task)
        self.hint_layer, self.guided_layer = hint_layer, guided_layer
        self.temperature, self.alpha = temperature, alpha
        target = self.teacher_probe[hint_layer]
        source = self.student_probe[guided_layer]
        if regressor_relu is None:
            regressor_relu = bool((target >= 0).all())
        self.regressor = build_adapter(source.shape, target.shape, relu=regressor_relu).to(
            source.device
        )

    def forward(self, batch: Batch) -> Output:
        student, teacher = self.features(batch)
        loss = hint_loss(self.regressor(student[self.guided_layer]), teacher[self.hint_layer])
        return Output(loss=loss, parts={"hint": loss.detach()}, logits=self.no_logits(batch))

    def second_phase(self) -> KD:
        """Phase 2: KD on the whole student from its current (phase-1) weights; no regressor."""
        self.release()
        return KD(self.teacher, self.student, self.temperature, self.alpha, task=self.task)


class FitNetsStage(TeacherFields, FeaturePhaseSpec):
    """``{method: fitnets, teacher, student, hint_layer, guided_layer, hint: {...}}``.

    Two phases: ``hint`` (phase 1, trained with the stage's settings with ``hint`` merged over
    them, e.g. ``hint: {epochs: 5, optimizer: {lr: 0.01}}``), then ``kd``: exactly the phase of
    a ``kd`` stage with the stage's own settings, ``temperature``, ``alpha`` and the teacher
    fields of :class:`~distill.methods.base.TeacherFields`.
    """

    method: Literal["fitnets"] = "fitnets"
    hint_layer: str | None = None
    guided_layer: str | None = None
    regressor_relu: bool | None = None
    hint: dict[str, Any] = Field(default_factory=dict)

    _hint_fits = field_validator("hint")(check_overrides)

    # 3 hint epochs (student stem..stages.1 + a 1x1 conv regressor on the teacher's middle
    # section, both [N, 32, H/2, W/2] on either demo dataset), then KD for the usual epochs.
    demo = DemoEntry(
        student="student_fitnets",
        stage={
            "method": "fitnets",
            "teacher": "teacher",
            "student": "student_fitnets",
            "hint_layer": "stages.1",
            "guided_layer": "stages.1",
            "hint": {"epochs": 3},
            "temperature": 4.0,
            "alpha": 0.9,
        },
    )

    def build_phase_one(self, ctx: StageContext) -> FitNets:
        return FitNets(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            ctx.sample_batch,
            hint_layer=self.hint_layer,
            guided_layer=self.guided_layer,
            regressor_relu=self.regressor_relu,
            temperature=self.temperature,
            alpha=self.alpha,
            task=ctx.task,
        )

    def phases(self, ctx: StageContext) -> list[Phase]:
        kd = KDStage(
            teacher=self.teacher,
            student=self.student,
            train=self.train,
            **self.model_dump(include=set(KDFields.model_fields) | set(TeacherFields.model_fields)),
        )
        hint = Phase(
            name="hint",
            build=lambda: self.phase_one(ctx),
            models=[self.student],
            config=merged_train(self.train, self.hint),
            after=FitNets.release,
        )
        return [hint, *kd.phases(ctx)]
