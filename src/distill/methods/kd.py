"""Classic knowledge distillation (Hinton, Vinyals and Dean 2015), on any task: class logits
of images, or token logits of a causal LM, with any divergence of :mod:`distill.losses`."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..checks import check_distinct_modules, check_fraction, check_temperature
from ..errors import ConfigError
from ..generation import OnPolicy
from ..losses import divergence, kd_loss
from ..tasks import Batch, Task
from ..teachers import Teacher, as_teacher
from . import _on_policy
from ._logits import VOCABS, check_standardize, distillation_logits, match_classes
from .base import (
    DemoEntry,
    Distiller,
    KDFields,
    Output,
    Phase,
    StageContext,
    TeacherFields,
    TeacherStudentSpec,
    check_same_outputs,
)


class KD(Distiller):
    r"""Soft-label distillation from a frozen teacher.

    .. math::
        \mathcal{L} = (1-\alpha)\,\mathrm{CE}(s, y) + \alpha\,T^2\,D(p_T, q_T),
        \quad p_T = \mathrm{softmax}(t/T),\; q_T = \mathrm{softmax}(s/T)

    with :math:`D` = KL(p ‖ q) by default (Hinton's KD, :func:`~distill.losses.kd_loss`), or
    any kind of :func:`~distill.losses.divergence` (reverse KL, generalised JSD with ``beta``,
    skew KLs, TVD). Parts: ``ce`` = (1−α)·CE and ``kd`` = α·T²·D. Both terms are means over the
    positions where the task applies losses (the batch for images; the labelled tokens for a
    causal LM, after the shift).

    Args:
        teacher: a :class:`~distill.teachers.Teacher`, or any trained module (wrapped in one:
            eval mode, frozen, run under ``torch.no_grad()``).
        student: the module to train; its logits must have the teacher's shape (or, with
            ``vocab="shared"``, differ in the last dimension only).
        temperature: ``T > 0`` (paper and CIFAR benchmarks: 4).
        alpha: weight of the soft term, in [0, 1] (CIFAR benchmarks: 0.9).
        loss: ``None`` for KL(p ‖ q), or a kind of :data:`~distill.losses.DIVERGENCES`.
        beta: the generalised JSD's weight (see :func:`~distill.losses.divergence`).
        skew: the skew KLs' mixing weight.
        vocab: ``"equal"``: teacher and student predict the same classes (a mismatch is an
            error naming both sizes); ``"shared"``: vocabularies padded differently within one
            tokenizer family (e.g. 151,936 and 152,064 ids): both are cut to the ids they share,
            the first ``min(V_s, V_t)``.
        standardize: take the soft term on z-scored logits (Sun et al. 2024), each position's
            logits shifted to mean 0 and scaled to standard deviation 1 before ``T``
            (:func:`~distill.losses.standardize`); the CE term keeps the raw logits.
        task: how the models are called on a batch (default ``classification``).
        on_policy: for a causal LM, distil on sequences the student samples itself for a share
            of the batches (GKD; see :class:`~distill.generation.OnPolicy`): the soft term over
            the generated tokens, no CE on them. Parts gain ``gen_seconds``.
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.9,
        *,
        loss: str | None = None,
        beta: float = 0.5,
        skew: float = 0.1,
        vocab: Literal["equal", "shared"] = "equal",
        standardize: bool = False,
        task: str | Task = "classification",
        on_policy: OnPolicy | None = None,
    ) -> None:
        super().__init__(task)
        self.temperature = check_temperature(temperature)
        self.alpha = check_fraction(alpha)
        if vocab not in VOCABS:
            raise ConfigError(f"vocab must be one of {', '.join(VOCABS)}, got {vocab!r}")
        if loss is not None:  # checks the kind, beta and skew once, here
            probe = torch.zeros(1, 2)
            divergence(probe, probe, loss, temperature=self.temperature, beta=beta, skew=skew)
        self.loss, self.beta, self.skew = loss, beta, skew
        self.vocab, self.standardize = vocab, standardize
        self.teacher = as_teacher(teacher, self.task)
        check_distinct_modules([self.teacher.module, student], "KD")
        self.student = student.requires_grad_(True)
        self.on_policy = on_policy
        if on_policy is not None:
            on_policy.check(self.task, self.teacher.module, student, vocab)

    def soft_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """T²·D(softmax(t/T), softmax(s/T)), a mean over the positions of ``mask``."""
        s, t = match_classes(logits, teacher_logits, self.vocab)
        s, t = distillation_logits(s, t, self.standardize)
        if self.loss is None:
            return kd_loss(s, t, self.temperature, mask=mask)
        value = divergence(
            s, t, self.loss, temperature=self.temperature, beta=self.beta, skew=self.skew,
            mask=mask,
        )
        return self.temperature**2 * value

    def forward(self, batch: Batch) -> Output:
        made = self.on_policy.generate(self, batch) if self.on_policy is not None else None
        batch = batch if made is None else made.batch
        teacher_logits = self.teacher(batch) if made is None else self.teacher.compute(batch)
        logits = self.task.logits(self.student, batch)
        soft = self.soft_loss(logits, teacher_logits, self.task.positions(batch))
        own = made is not None and not made.by_teacher  # no CE on the student's own samples
        ce = soft.new_zeros(()) if own else self.task.supervised_loss(logits, batch)
        parts = {"ce": (1 - self.alpha) * ce, "kd": self.alpha * soft}
        loss = parts["ce"] + parts["kd"]
        if self.on_policy is not None:
            parts["gen_seconds"] = soft.new_tensor(made.seconds if made is not None else 0.0)
        return Output(loss=loss, parts={k: v.detach() for k, v in parts.items()}, logits=logits)


class KDStage(_on_policy.OnPolicyFields, TeacherFields, KDFields, TeacherStudentSpec):
    """``{method: kd, teacher: NAME, student: NAME, temperature: 4.0, alpha: 0.9}``, plus
    ``loss: {kind: jsd, beta: 0.5}``, ``vocab: shared`` and ``standardize`` (see :class:`KD`),
    the teacher fields of :class:`~distill.methods.base.TeacherFields` (``cache:
    teacher``...) and, on a causal LM, ``on_policy: {fraction: 0.5, ...}`` and ``seq_kd``
    (:class:`~distill.methods._on_policy.OnPolicyFields`)."""

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
            **self.soft_loss_options(),
            **self.on_policy_options(ctx, self.stage_name()),
        )

    def check(self, ctx: StageContext) -> None:
        check_standardize(self)
        where = f"stage {self.stage_name()!r} (kd)"
        check_same_outputs(ctx, where, [self.teacher, self.student], self.vocab == "shared")
        self.check_on_policy(ctx, where, self.teacher, self.student, self.vocab)

    def phases(self, ctx: StageContext) -> list[Phase]:
        return [Phase("kd", lambda: self.build(ctx), [self.student], self.train)]

    @classmethod
    def report_section(cls, summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
        return _on_policy.report_section(summary, stages)
