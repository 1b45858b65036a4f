"""Probabilistic knowledge transfer (PKT; Passalis and Tefas, ECCV 2018).

The student matches, within each batch, the teacher's probabilities that one sample is a
neighbour of another, estimated with a cosine kernel on the embeddings
(:mod:`distill.losses.pkt`). Only similarities are compared, so the embeddings' widths may
differ and no adapter is needed::

    pkt = PKT(teacher, student)                 # penultimate features, weight 30,000
    out = pkt(x, y)                             # parts: {"ce", "pkt"}
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..checks import LossWeight, check_nonnegative
from ..losses.pkt import pkt_loss
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._embeddings import PENULTIMATE, EmbeddingDistiller, EmbeddingFields
from .base import DemoEntry, OnePhaseSpec, Output, StageContext


class PKT(EmbeddingDistiller):
    r"""PKT: cross-entropy plus the weighted probability-transfer divergence on embeddings.

    .. math::
        \mathcal{L} = \mathrm{CE}(s, y) + w\,\frac{1}{N^2} \sum_{i,j}
                      P^t_{ij} \log \frac{P^t_{ij} + \epsilon}{P^s_{ij} + \epsilon}

    with :math:`P_{ij}` the row-normalised cosine kernel :math:`(1 + \cos(e_i, e_j))/2` of
    each network's embeddings of the batch (:func:`~distill.losses.pkt.pkt_loss`, the authors'
    element mean over the :math:`N^2` entries). Default :math:`w` = 30,000 with CE weight 1:
    RepDistiller's CIFAR-100 setting (``--distill pkt -a 0 -b 30000``, also mdistiller's
    ``PKT.LOSS.FEAT_WEIGHT``), on the penultimate features after pooling (``head.flatten`` of a
    zoo model). The large weight offsets the element mean's :math:`1/N^2`.

    Parts: ``ce`` and ``pkt`` (:math:`w` × the divergence).

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen).
        student: the module to train.
        weight: :math:`w \ge 0`.
        student_layer, teacher_layer: the layers whose outputs are the embeddings.
        sample_batch: optional; a probe forward checks both layers.
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        weight: float = 30000.0,
        *,
        student_layer: str = PENULTIMATE,
        teacher_layer: str = PENULTIMATE,
        sample_batch: Batch | torch.Tensor | None = None,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(
            teacher,
            student,
            student_layer=student_layer,
            teacher_layer=teacher_layer,
            sample_batch=sample_batch,
            task=task,
        )
        self.weight = check_nonnegative(weight, "weight")

    def forward(self, batch: Batch) -> Output:
        logits, student, teacher = self.embeddings(batch)
        parts = {
            "ce": self.task.supervised_loss(logits, batch),
            "pkt": self.weight * pkt_loss(student, teacher),
        }
        return Output.from_parts(parts, logits)


class PKTStage(OnePhaseSpec, EmbeddingFields):
    """``{method: pkt, teacher, student, weight: 30000, student_layer: head.flatten,
    teacher_layer: head.flatten}``: one phase, ``pkt``."""

    method: Literal["pkt"] = "pkt"
    weight: LossWeight = 30000.0

    demo = DemoEntry(
        student="student_pkt",
        stage={"method": "pkt", "teacher": "teacher", "student": "student_pkt"},
    )

    def distiller(self, ctx: StageContext) -> PKT:
        """The PKT Distiller on ``ctx``'s models."""
        return PKT(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            self.weight,
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            sample_batch=ctx.sample_batch,
            task=ctx.task,
        )
