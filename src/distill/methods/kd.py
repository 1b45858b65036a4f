"""Classic knowledge distillation (Hinton, Vinyals and Dean 2015), on any task: class logits
of images, or token logits of a causal LM, with any divergence of :mod:`distill.losses`; from a
live teacher or an offline top-k store, and for language models optionally chunk by chunk."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..checks import check_fraction, check_temperature
from ..errors import ConfigError
from ..generation import OnPolicy
from ..heads import check_output_layer, chunked, hidden_states, output_layer
from ..losses import divergence, kd_loss, standardize
from ..losses.sparse import TopK
from ..losses.stored import topk_divergence
from ..tasks import Batch, Task
from ..teachers import Teacher
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
    TeacherLogitsFields,
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

    The teacher may answer from an offline store (``teacher(batch)`` a
    :class:`~distill.losses.sparse.TopK`): the divergence is then taken over the stored ids
    plus one bucket for the rest of the vocabulary (:func:`~distill.losses.stored.topk_divergence`).

    With ``chunk_tokens = n`` (language models), the student's logits are never formed whole:
    its last hidden states at the labelled positions ``[T, H]`` are taken (its output layer
    skipped, :mod:`distill.heads`), and the output layer, both terms and the teacher's logits
    (live: from its own hidden states, under ``no_grad``; or the store's rows) are computed
    ``n`` positions at a time, each chunk recomputed in the backward pass
    (:func:`~distill.heads.chunked`). Peak memory then grows with ``n·V``, not ``N·L·V``; the
    value and the gradients are those of the dense computation. ``Output.logits`` is then
    empty along the classes (``[N, L−1, 0]``).

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
            (:func:`~distill.losses.standardize`); the CE term keeps the raw logits. A store
            keeps the teacher's log-probabilities of its standardised logits.
        task: how the models are called on a batch (default ``classification``).
        on_policy: for a causal LM, distil on sequences the student samples itself for a share
            of the batches (GKD; see :class:`~distill.generation.OnPolicy`): the soft term over
            the generated tokens, no CE on them. Parts gain ``gen_seconds``.
        chunk_tokens: compute the loss this many positions at a time (``None``: all at once);
            an integer >= 1. Needs models whose output layer is known
            (:func:`~distill.heads.output_layer`: Hugging Face causal LMs).
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
        chunk_tokens: int | None = None,
    ) -> None:
        super().__init__(task)
        if chunk_tokens is not None and (
            isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1
        ):
            raise ConfigError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
        self.chunk_tokens = chunk_tokens
        self._head_checked = False
        self.temperature = check_temperature(temperature)
        self.alpha = check_fraction(alpha)
        if vocab not in VOCABS:
            raise ConfigError(f"vocab must be one of {', '.join(VOCABS)}, got {vocab!r}")
        if loss is not None:  # checks the kind, beta and skew once, here
            probe = torch.zeros(1, 2)
            divergence(probe, probe, loss, temperature=self.temperature, beta=beta, skew=skew)
        self.loss, self.beta, self.skew = loss, beta, skew
        self.vocab, self.standardize = vocab, standardize
        self.set_pair(teacher, student)
        if chunk_tokens is not None:  # both output layers must be known before training
            output_layer(student)
            if self.teacher.store is None:
                output_layer(self.teacher.module)
        self.on_policy = on_policy
        if on_policy is not None:
            if self.teacher.store is not None and not self.teacher.has_model:
                raise ConfigError(
                    "on_policy needs a teacher model to score the student's own samples; an "
                    "offline store holds the teacher's outputs on the training data only"
                )
            on_policy.check(self.task, self.teacher.module, student, vocab)

    def soft_loss(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """T²·D(softmax(t/T), softmax(s/T)), a mean over the positions of ``mask``; for a
        stored :class:`TopK` teacher, over its ids and one bucket for the rest."""
        options = {"temperature": self.temperature, "beta": self.beta, "skew": self.skew}
        if isinstance(teacher_logits, TopK):  # log-probabilities at T, standardised if asked
            s = standardize(logits) if self.standardize else logits
            kind = self.loss or "forward_kl"
            value = topk_divergence(s, teacher_logits, kind, mask=mask, **options)
            return self.temperature**2 * value
        s, t = match_classes(logits, teacher_logits, self.vocab)
        s, t = distillation_logits(s, t, self.standardize)
        if self.loss is None:
            return kd_loss(s, t, self.temperature, mask=mask)
        return self.temperature**2 * divergence(s, t, self.loss, mask=mask, **options)

    def forward(self, batch: Batch) -> Output:
        made = self.on_policy.generate(self, batch) if self.on_policy is not None else None
        batch = batch if made is None else made.batch
        own = made is not None and not made.by_teacher  # no CE on the student's own samples
        if self.chunk_tokens is not None:
            ce, soft, logits = self.chunked_losses(batch, made is not None, own)
        else:
            teacher_logits = self.teacher(batch) if made is None else self.teacher.compute(batch)
            logits = self.task.logits(self.student, batch)
            mask = self.task.positions(batch)
            if mask is not None and bool(mask.all()):
                mask = None  # the same mean, without masking [N, L, V] tensors
            soft = self.soft_loss(logits, teacher_logits, mask)
            ce = soft.new_zeros(()) if own else self.task.supervised_loss(logits, batch)
        parts = {"ce": (1 - self.alpha) * ce, "kd": self.alpha * soft}
        if self.on_policy is not None:
            parts["gen_seconds"] = soft.new_tensor(made.seconds if made is not None else 0.0)
        return Output.from_parts(parts, logits)

    def chunked_losses(
        self, batch: Batch, live: bool = False, own: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The CE and soft terms of :meth:`forward` computed ``chunk_tokens`` positions at a
        time (see the class docstring): the same values and gradients, without the whole
        logits. ``live`` runs the teacher model even where a store answers (sequences the
        student generated); ``own`` leaves out CE (the student's own samples). Returns
        ``(ce, soft, logits)`` with ``logits`` empty along the classes."""
        if not self._head_checked:
            check_output_layer(self.student, self.task, batch)
            self._head_checked = True
        hidden = hidden_states(self.student, self.task, batch)  # [N, L-1, H], the graph
        mask = self.task.positions(batch)
        if mask is None:
            mask = torch.ones(hidden.shape[:-1], dtype=torch.bool, device=hidden.device)
        mask = mask.bool()
        rows, targets = hidden[mask], self.task.targets(batch)[mask]  # [T, H], [T]
        live, stored = live or self.teacher.store is None, False
        if live:  # hidden states now, the teacher's logits chunk by chunk
            teacher: tuple[torch.Tensor, ...] = (self.teacher.hidden(batch)[mask],)
        else:  # an offline store's rows, or a cache's dense logits
            found = self.teacher(batch)
            stored = isinstance(found, TopK)
            teacher = tuple(x[mask] for x in found) if stored else (found[mask],)

        def losses(logits: torch.Tensor, y: torch.Tensor, *t: torch.Tensor) -> tuple[Any, ...]:
            t_chunk: Any = self.teacher.head(t[0]) if live else TopK(*t) if stored else t[0]
            soft = self.soft_loss(logits, t_chunk, None) * logits.shape[0]
            return soft, F.cross_entropy(logits.float(), y, reduction="sum")

        if rows.shape[0]:
            head = output_layer(self.student)
            soft, ce = chunked(head, rows, self.chunk_tokens, losses, targets, *teacher)
        else:  # no labelled position: zero, in the graph
            soft = ce = rows.sum().float() * 0.0
        count = mask.sum().clamp_min(1)
        ce = ce * 0.0 if own else ce / count
        return ce, soft / count, hidden.new_empty((*hidden.shape[:-1], 0))


class KDStage(
    _on_policy.OnPolicyFields, TeacherLogitsFields, TeacherFields, KDFields, TeacherStudentSpec):
    """``{method: kd, teacher: NAME, student: NAME, temperature: 4.0, alpha: 0.9}``, plus
    ``loss: {kind: jsd, beta: 0.5}``, ``vocab: shared`` and ``standardize`` (see :class:`KD`),
    the teacher fields of :class:`~distill.methods.base.TeacherFields` (``cache:
    teacher``...), ``teacher_logits: PATH`` (an offline store built by ``distill cache
    build``; the teacher never runs) and ``chunk_tokens: N`` (language models: the loss N
    tokens at a time, never the whole logits)."""

    method: Literal["kd"] = "kd"
    chunk_tokens: int | None = Field(None, ge=1)

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

    @model_validator(mode="after")
    def _one_source(self) -> KDStage:
        if self.teacher_logits is not None and self.cache != "none":
            raise ValueError(
                f"teacher_logits and cache: {self.cache} both say where the teacher's outputs "
                "come from; keep one (an offline store needs no cache)"
            )
        return self

    def build(self, ctx: StageContext) -> KD:
        """The KD Distiller on ``ctx``'s models."""
        return KD(
            ctx.teacher(self.teacher, self, self.temperature),
            ctx.models[self.student],
            self.temperature,
            self.alpha,
            task=ctx.task,
            chunk_tokens=self.chunk_tokens,
            **self.soft_loss_options(),
            **self.on_policy_options(ctx, self.stage_name()),
        )

    def check(self, ctx: StageContext) -> None:
        check_standardize(self)
        where = f"stage {self.stage_name()!r} (kd)"
        if self.teacher_logits is None:
            check_same_outputs(ctx, where, [self.teacher, self.student], self.vocab == "shared")
            self.check_on_policy(ctx, where, self.teacher, self.student, self.vocab)
            if self.chunk_tokens is not None and self.train.placement != "replicate":
                raise ConfigError(
                    f"{where}: chunk_tokens with a live teacher runs the teacher's output "
                    "layer chunk by chunk, outside its forward, which a sharded teacher "
                    f"cannot do (teacher_placement: {self.train.placement}); set "
                    "train.teacher_placement: replicate, or read the teacher from a store "
                    "(teacher_logits)"
                )
            return
        store = ctx.teacher(self.teacher, self, self.temperature).store  # checks the store
        classes = ctx.sample_logits(self.student).shape[-1]
        if classes != store.classes:
            raise ConfigError(
                f"{where}: the teacher store {self.teacher_logits} holds a teacher of "
                f"{store.classes} classes but the student {self.student!r} predicts {classes}; "
                "a store is read by students of the teacher's vocabulary (vocab: shared needs "
                "the live teacher)"
            )

    def summary_fields(self) -> dict[str, Any]:
        fields = super().summary_fields()
        if self.chunk_tokens is None:
            fields.pop("chunk_tokens", None)
        return fields

    def phases(self, ctx: StageContext) -> list[Phase]:
        return [Phase("kd", lambda: self.build(ctx), [self.student], self.train)]

    @classmethod
    def report_section(cls, summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
        return _on_policy.report_section(summary, stages)
