"""Relational knowledge distillation (RKD; Park, Kim, Lu and Cho, CVPR 2019).

The student's embeddings of a batch keep the teacher's *structure*: the distances between
every pair and the angles of every triplet (:mod:`distill.losses.rkd`). Only relations are
compared, so the embeddings' widths may differ and no adapter is needed::

    rkd = RKD(teacher, student)                 # penultimate features, weights 25 and 50
    out = rkd(x, y)                             # parts: {"ce", "distance", "angle"}
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..checks import LossWeight, check_nonnegative
from ..losses.rkd import rkd_terms
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._embeddings import PENULTIMATE, EmbeddingDistiller, EmbeddingFields
from .base import DemoEntry, OnePhaseSpec, Output, StageContext


class RKD(EmbeddingDistiller):
    r"""RKD: cross-entropy plus the weighted distance and angle terms on embeddings.

    .. math::
        \mathcal{L} = \mathrm{CE}(s, y) + w_D\,\mathrm{distance}(e^s, e^t)
                      + w_A\,\mathrm{angle}(e^s, e^t)

    with :math:`e^s, e^t` the embeddings of the batch (:func:`~distill.losses.rkd.rkd_terms`:
    Huber losses between normalised pairwise distances, and between triplet angle cosines,
    averaged over all pairs and triplets). Defaults are the paper's and RepDistiller's
    CIFAR-100 setting: :math:`w_D = 25`, :math:`w_A = 50`, CE weight 1, on the penultimate
    features after pooling (``head.flatten`` of a zoo model).

    Parts: ``ce``, ``distance`` (:math:`w_D` × distance) and ``angle`` (:math:`w_A` × angle).

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen).
        student: the module to train.
        distance_weight: :math:`w_D \ge 0`.
        angle_weight: :math:`w_A \ge 0`.
        student_layer, teacher_layer: the layers whose outputs are the embeddings.
        sample_batch: optional; a probe forward checks both layers.
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
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
        self.distance_weight = check_nonnegative(distance_weight, "distance_weight")
        self.angle_weight = check_nonnegative(angle_weight, "angle_weight")

    def forward(self, batch: Batch) -> Output:
        logits, student, teacher = self.embeddings(batch)
        distance, angle = rkd_terms(student, teacher)
        parts = {
            "ce": self.task.supervised_loss(logits, batch),
            "distance": self.distance_weight * distance,
            "angle": self.angle_weight * angle,
        }
        return Output.from_parts(parts, logits)


class RKDStage(OnePhaseSpec, EmbeddingFields):
    """``{method: rkd, teacher, student, distance_weight: 25, angle_weight: 50,
    student_layer: head.flatten, teacher_layer: head.flatten}``: one phase, ``rkd``."""

    method: Literal["rkd"] = "rkd"
    distance_weight: LossWeight = 25.0
    angle_weight: LossWeight = 50.0

    demo = DemoEntry(
        student="student_rkd",
        stage={"method": "rkd", "teacher": "teacher", "student": "student_rkd"},
    )

    def distiller(self, ctx: StageContext) -> RKD:
        """The RKD Distiller on ``ctx``'s models."""
        return RKD(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            self.distance_weight,
            self.angle_weight,
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            sample_batch=ctx.sample_batch,
            task=ctx.task,
        )
