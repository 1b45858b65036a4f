"""Attention transfer (Zagoruyko and Komodakis, ICLR 2017).

The student learns the labels and, at pairs of layers, where the teacher's feature maps are
active: the spatial *attention map* ``q = normalise(flatten(mean_c |f|^p))`` of each map
(:func:`~distill.losses.at.attention_map`). One phase::

    at = AT(teacher, student, x[:8])            # pairs by probe for zoo models
    out = at(x, y)                              # parts: {"ce": ..., "at": ...}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..checks import LossWeight, Positive, check_nonnegative, check_positive
from ..config import Strict
from ..errors import ConfigError
from ..losses.at import at_terms
from ..taps import Taps, probe
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._features import check_layer, zoo_sections
from .base import DemoEntry, Distiller, OnePhaseSpec, Output, StageContext


class ATPair(Strict):
    """One pair of layers whose attention maps are matched: ``{student: NAME, teacher: NAME}``
    (the outputs of those submodules, ``[N, C, H, W]``; channels may differ)."""

    student: str
    teacher: str


def propose_at_pairs(
    teacher: nn.Module, student: nn.Module, sample_batch: Batch, task: str | Task
) -> list[ATPair]:
    """Pairs for two zoo models, by probe: each section of the student (``stages.i``) with the
    last section of the teacher whose output has the same spatial size (RepDistiller matches
    every group output; this also pairs models with different numbers of sections)."""
    sizes = {}
    for role, model in (("student", student), ("teacher", teacher)):
        found = probe(model, zoo_sections(model, "pairs"), sample_batch, task=task)
        sizes[role] = {name: tuple(feature.shape[2:]) for name, feature in found.items()}
    pairs = []
    for name, size in sizes["student"].items():
        same = [t for t, t_size in sizes["teacher"].items() if t_size == size]
        if same:
            pairs.append(ATPair(student=name, teacher=same[-1]))
    if not pairs:
        raise ConfigError(
            "pairs: no section of the student has the spatial size of a section of the teacher; "
            "name the layer pairs (`distill layers ARCH` shows the shapes)"
        )
    return pairs


class AT(Distiller):
    r"""Attention transfer: cross-entropy plus β times the attention-map distance.

    .. math::
        \mathcal{L} = \mathrm{CE}(s, y) + \beta \sum_j \frac{1}{N\,h_j w_j}
                      \sum_{n,i} \big(q^j_{s,n,i} - q^j_{t,n,i}\big)^2

    This is the form of RepDistiller's CIFAR benchmarks (whose figures we quote), with
    β = 1000 and p = 2; the paper writes β/2 times the sum over pairs of ‖q_s − q_t‖₂ (see
    :func:`~distill.losses.at.at_loss`). When a pair's maps differ in spatial size, the larger
    is average-pooled to the smaller. Parts: ``ce`` and ``at`` (β times the sum).

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen, eval mode,
            run under ``torch.no_grad()`` up to its last paired layer).
        student: the module to train.
        sample_batch: a batch (a dict, or an input tensor for image classification); one
            probe forward checks the layers and, without ``pairs``, chooses them.
        pairs: :class:`ATPair` objects, dicts ``{student, teacher}`` or ``(student, teacher)``
            tuples of layer names. Default (zoo models): :func:`propose_at_pairs`.
        beta: weight of the attention term (1000).
        p: exponent of the attention map (2).
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        sample_batch: Batch | torch.Tensor,
        *,
        pairs: Sequence[ATPair | Mapping[str, str] | tuple[str, str]] | None = None,
        beta: float = 1000.0,
        p: float = 2.0,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        beta, p = check_nonnegative(beta, "beta"), check_positive(p, "p")
        self.set_pair(teacher, student)
        module = self.teacher.module
        self.beta, self.p = beta, p
        if isinstance(sample_batch, torch.Tensor):
            sample_batch = {"inputs": sample_batch}
        if pairs is None:
            pairs = propose_at_pairs(module, student, sample_batch, self.task)
        self.pairs = [_as_pair(pair) for pair in pairs]
        if not self.pairs:
            raise ConfigError("AT needs at least one layer pair")
        for index, pair in enumerate(self.pairs):
            check_layer(student, pair.student, f"pairs.{index}.student")
            check_layer(module, pair.teacher, f"pairs.{index}.teacher")
        found = {
            "student": probe(student, [p.student for p in self.pairs], sample_batch, task=task),
            "teacher": probe(module, [p.teacher for p in self.pairs], sample_batch, task=task),
        }
        for role, features in found.items():
            for name, feature in features.items():
                if feature.dim() != 4:
                    raise ConfigError(
                        f"{role} layer {name!r} gives shape {list(feature.shape)}; attention "
                        "maps need [N, C, H, W] feature maps"
                    )

    def forward(self, batch: Batch) -> Output:
        teacher = self.teacher.features(batch, [p.teacher for p in self.pairs])
        with Taps(self.student, [p.student for p in self.pairs]) as taps:
            logits = self.task.logits(self.student, batch)
            student = taps.features()
        terms = at_terms(
            [student[p.student] for p in self.pairs], [teacher[p.teacher] for p in self.pairs],
            self.p,
        )
        parts = {
            "ce": self.task.supervised_loss(logits, batch),
            "at": self.beta * torch.stack(terms).sum(),
        }
        return Output.from_parts(parts, logits)


def _as_pair(pair: ATPair | Mapping[str, str] | tuple[str, str]) -> ATPair:
    if isinstance(pair, ATPair):
        return pair
    if isinstance(pair, Mapping):
        return ATPair.model_validate(pair)
    student, teacher = pair
    return ATPair(student=student, teacher=teacher)


class ATStage(OnePhaseSpec):
    """``{method: at, teacher, student, pairs: [{student: NAME, teacher: NAME}], beta: 1000,
    p: 2}``: one phase, ``at``, with the stage's settings."""

    method: Literal["at"] = "at"
    pairs: list[ATPair] | None = Field(None, min_length=1)
    beta: LossWeight = 1000.0
    p: Positive = 2.0

    # Both demo models have two sections of the same sizes as the teacher's first two.
    demo = DemoEntry(
        student="student_at",
        stage={"method": "at", "teacher": "teacher", "student": "student_at", "beta": 1000.0},
    )

    def distiller(self, ctx: StageContext) -> AT:
        """The AT Distiller on ``ctx``'s models."""
        return AT(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            ctx.sample_batch,
            pairs=self.pairs,
            beta=self.beta,
            p=self.p,
            task=ctx.task,
        )
