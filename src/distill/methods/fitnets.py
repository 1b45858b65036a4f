"""FitNets: hints for thin deep nets (Romero et al. 2014), as the paper's two stages.

Stage 1 (*hints*): the student's layers up to its *guided* layer, plus a regressor ``r``,
learn to reproduce the teacher's *hint* layer: ``hint_loss(r(v_g(x)), u_h(x))``. Stage 2: the
whole student trains with classic KD, starting from the stage-1 weights; the regressor is
dropped. Python API::

    hints = FitNets(teacher, student, x[:8], hint_layer="stages.1", guided_layer="stages.1")
    fit(hints)                    # stage 1: loss = hint_loss; trains student layers up to
                                  # stages.1 and the regressor only
    fit(hints.second_stage())     # stage 2: a KD(teacher, student, temperature, alpha)

Many CIFAR benchmarks run FitNets as one stage (CE + 100·hint); that is not this method.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..adapters import build_adapter
from ..losses import hint_loss
from ._staged import (
    FeatureStage,
    FeatureStageSpec,
    check_kd_settings,
    check_layer,
    check_overrides,
    merged_train,
    zoo_sections,
)
from .base import Output, Phase, StageContext, TeacherCacheFields
from .kd import KD, KDStage


def middle_layer(model: nn.Module, role: str) -> str:
    """The paper's default hint / guided layer for a zoo model: its middle section,
    ``stages.{k // 2}`` of ``k`` sections (``stages.1`` for ResNets, WRNs and every cnn-N)."""
    sections = zoo_sections(model, role)
    return sections[len(sections) // 2]


class FitNets(FeatureStage):
    r"""Stage 1 of FitNets: the student's layers up to ``guided_layer`` and a regressor learn
    the teacher's ``hint_layer``.

    .. math::
        \mathcal{L}_\text{hint} = \operatorname{mean}\big(r(v_g(x)) - u_h(x)\big)^2

    Part ``hint``. The regressor is sized by one probe forward on ``sample_inputs``
    (:func:`distill.adapters.build_adapter`: the FitNets conv rule for ``[N, C, H, W]``, a
    linear map for ``[N, L, D]`` and ``[N, D]``). The student's forward stops at the guided
    layer, so later layers neither run nor change (BatchNorm statistics included), and only the
    parameters that feed the guided layer are trainable (``requires_grad``) until
    :meth:`release` or :meth:`second_stage`. ``Output.logits`` is an empty ``[N, 0]`` tensor.

    Args:
        teacher: any module; frozen, eval mode, run under ``torch.no_grad()`` (up to the hint
            layer only).
        student: the module to train.
        sample_inputs: a batch of inputs for the probe (a few items suffice).
        hint_layer: the teacher's layer, by dotted name. Default (zoo models): the middle
            section, as in the paper.
        guided_layer: the student's layer. Default (zoo models): the middle section.
        regressor_relu: end a conv regressor with ReLU. Default ``None``: when the teacher's
            hint feature is non-negative on the probe batch (it follows a ReLU).
        temperature: stage 2's KD temperature ``T > 0`` (4, as in the CIFAR benchmarks).
        alpha: stage 2's KD weight in [0, 1] (0.9).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        sample_inputs: torch.Tensor,
        *,
        hint_layer: str | None = None,
        guided_layer: str | None = None,
        regressor_relu: bool | None = None,
        temperature: float = 4.0,
        alpha: float = 0.9,
    ) -> None:
        check_kd_settings(temperature, alpha)
        hint_layer = hint_layer or middle_layer(teacher, "hint_layer")
        guided_layer = guided_layer or middle_layer(student, "guided_layer")
        check_layer(teacher, hint_layer, "hint_layer")
        check_layer(student, guided_layer, "guided_layer")
        super().__init__(teacher, student, sample_inputs, [guided_layer], [hint_layer])
        self.hint_layer, self.guided_layer = hint_layer, guided_layer
        target = self.teacher_probe[hint_layer]
        source = self.student_probe[guided_layer]
        if regressor_relu is None:
            regressor_relu = bool((target >= 0).all())
        self.regressor = build_adapter(source.shape, target.shape, relu=regressor_relu).to(
            source.device
        )
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Output:
        student, teacher = self.features(inputs)
        loss = hint_loss(self.regressor(student[self.guided_layer]), teacher[self.hint_layer])
        return Output(loss=loss, parts={"hint": loss.detach()}, logits=self.no_logits(inputs))

    def second_stage(self) -> KD:
        """Stage 2: KD on the whole student from its current (stage-1) weights; no regressor."""
        self.release()
        return KD(self.teacher, self.student, self.temperature, self.alpha)


class FitNetsStage(FeatureStageSpec, TeacherCacheFields):
    """``{method: fitnets, teacher, student, hint_layer, guided_layer, hint: {...}}``.

    Two phases: ``hint`` (stage 1, trained with the stage's settings with ``hint`` merged over
    them, e.g. ``hint: {epochs: 5, optimizer: {lr: 0.01}}``), then ``kd``: exactly the phase of
    a ``kd`` stage with the stage's own settings, ``temperature``, ``alpha`` and the
    teacher-cache fields of :class:`~distill.methods.base.TeacherCacheFields`.
    """

    method: Literal["fitnets"] = "fitnets"
    hint_layer: str | None = None
    guided_layer: str | None = None
    regressor_relu: bool | None = None
    hint: dict[str, Any] = Field(default_factory=dict)

    _hint_fits = field_validator("hint")(check_overrides)

    def build_stage_one(self, ctx: StageContext) -> FitNets:
        return FitNets(
            ctx.models[self.teacher],
            ctx.models[self.student],
            ctx.sample_inputs,
            hint_layer=self.hint_layer,
            guided_layer=self.guided_layer,
            regressor_relu=self.regressor_relu,
            temperature=self.temperature,
            alpha=self.alpha,
        )

    def phases(self, ctx: StageContext) -> list[Phase]:
        kd = KDStage(
            teacher=self.teacher,
            student=self.student,
            temperature=self.temperature,
            alpha=self.alpha,
            train=self.train,
            **self.model_dump(include=set(TeacherCacheFields.model_fields)),
        )
        hint = Phase(
            name="hint",
            build=lambda: self.stage_one(ctx),
            trains=[self.student],
            train=merged_train(self.train, self.hint),
            after=FitNets.release,
        )
        return [hint, *kd.phases(ctx)]
