"""What RKD, PKT and CRD share: cross-entropy on the logits plus a loss on one embedding per
network, by default the penultimate features (after global pooling) as in RepDistiller.

Features are taken by layer name with :class:`~distill.taps.Taps`: the student's during its
ordinary forward (which also gives its logits), the teacher's from a forward that stops right
after its layer. For zoo models (``stem`` → ``stages`` → ``head``) the pooled, flattened
features are the output of ``head.flatten``, ``[N, C]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Strict
from ..errors import ConfigError
from ..taps import Taps, probe
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._features import check_layer
from .base import Distiller

#: The zoo models' penultimate features: pooled and flattened, ``[N, C]``.
PENULTIMATE = "head.flatten"


class EmbeddingFields(Strict):
    """Recipe fields naming the layer of each network whose output is its embedding
    (default: ``head.flatten``, the pooled penultimate features of a zoo model)."""

    student_layer: str = PENULTIMATE
    teacher_layer: str = PENULTIMATE


class EmbeddingDistiller(Distiller):
    """Base of the methods that compare one embedding per network.

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen; run
            without a graph and only up to ``teacher_layer``).
        student: the module to train.
        student_layer: the student's layer whose output is its embedding.
        teacher_layer: the teacher's.
        sample_batch: optional batch (a dict, or an input tensor for image classification);
            one probe forward checks that both layers run and give ``[N, ...]`` features.
        task: how the models are called on a batch.

    Attributes:
        student_probe, teacher_probe: the embeddings of ``sample_batch`` (``None`` without
            one), e.g. to size heads.
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        *,
        student_layer: str = PENULTIMATE,
        teacher_layer: str = PENULTIMATE,
        sample_batch: Batch | torch.Tensor | None = None,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        self.set_pair(teacher, student)
        module = self.teacher.module
        for model, name, field in (
            (student, student_layer, "student_layer"),
            (module, teacher_layer, "teacher_layer"),
        ):
            try:
                check_layer(model, name, field)
            except ConfigError as exc:
                hint = (
                    f" (the default {PENULTIMATE!r} is a zoo model's pooled penultimate "
                    "features; name the layer that gives this model's)"
                    if name == PENULTIMATE
                    else ""
                )
                raise ConfigError(f"{exc}{hint}") from None
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.student_probe = self.teacher_probe = None
        if sample_batch is not None:
            if isinstance(sample_batch, torch.Tensor):
                sample_batch = {"inputs": sample_batch}
            found = {}
            for role, model, name in (
                ("student", student, student_layer),
                ("teacher", module, teacher_layer),
            ):
                feature = probe(model, name, sample_batch, task=self.task)[name]
                if feature.dim() < 2:
                    raise ConfigError(
                        f"{role}_layer: {name!r} gives shape {list(feature.shape)}; an "
                        "embedding needs [N, D] (or [N, ...], flattened) features"
                    )
                found[role] = feature
            self.student_probe, self.teacher_probe = found["student"], found["teacher"]

    def embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(student logits, student embedding, teacher embedding)`` of a batch; the teacher's
        is computed without a graph, from a forward that stops after its layer."""
        teacher = self.teacher.features(batch, [self.teacher_layer])[self.teacher_layer]
        with Taps(self.student, self.student_layer) as taps:
            logits = self.task.logits(self.student, batch)
            student = taps[self.student_layer]
        return logits, student, teacher
