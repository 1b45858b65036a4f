"""What FitNets and FSP share: a first phase on intermediate features, then one on the task.

The papers call these two steps "stages"; here a recipe *stage* runs them as two *phases*.
Phase 1 is a :class:`FeaturePhase`: the student learns features of a frozen teacher, taken by
layer name with :class:`~distill.taps.Taps`. Only the student parameters that feed its tapped
layers train, and both forwards stop right after the last tapped layer, so the student's later
layers (weights *and* BatchNorm running statistics) come out of phase 1 exactly as they went
in. Phase 2 is an ordinary Distiller on the whole student.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import ValidationInfo
from torch import nn

from ..config import TrainConfig, merged_train
from ..errors import ConfigError
from ..taps import Taps, feeding_parameters, probe, resolve_module
from ..tasks import Batch, Task
from ..teachers import Teacher
from .base import Distiller, KDFields, StageContext, TeacherStudentSpec, untouched


def check_overrides(cls: type, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Field validator of a stage's phase overrides (``hint:``, ``fsp:``): they must make a
    valid :class:`TrainConfig` when merged over the stage's ``train`` (validated before)."""
    train: TrainConfig | None = info.data.get("train")
    if train is not None:
        merged_train(train, value)
    return value


def zoo_sections(model: nn.Module, role: str) -> list[str]:
    """``["stages.0", "stages.1", ...]`` of a zoo model (see :mod:`distill.models`).

    Raises:
        ConfigError: ``model`` has no ``stem`` and ``stages``; ``role`` names what the caller
            wanted to choose, for the message.
    """
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(model, "stem") or not len(stages):
        raise ConfigError(
            f"{role}: {type(model).__name__} is not a zoo model (no `stem` and `stages`), so "
            "there is no default; name its layers (`distill layers ARCH` or "
            "distill.taps.layer_shapes(model, x) lists them)"
        )
    return [f"stages.{i}" for i in range(len(stages))]


def check_layer(model: nn.Module, name: str, field: str) -> None:
    """Raise :class:`ConfigError` naming ``field`` when ``model`` has no layer ``name``."""
    try:
        resolve_module(model, name)
    except ConfigError as exc:
        raise ConfigError(f"{field}: {exc}") from None


class FeaturePhase(Distiller):
    """Base of the first phase of FitNets and FSP.

    On construction it probes both models once on ``sample_batch`` (eval mode, nothing
    changes) and leaves ``requires_grad`` on only for the student parameters that feed
    ``student_layers``; :meth:`release` (which the phase-2 Distillers also do) turns it back
    on for the whole student. :meth:`features` returns the tapped features of a batch.

    Attributes:
        student_probe: the student's features on ``sample_batch`` (for sizing adapters).
        teacher_probe: the teacher's.
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        sample_batch: Batch | torch.Tensor,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str],
        *,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        self.set_pair(teacher, student, trainable=False)
        self.student_layers = list(dict.fromkeys(student_layers))
        self.teacher_layers = list(dict.fromkeys(teacher_layers))
        if isinstance(sample_batch, torch.Tensor):
            sample_batch = {"inputs": sample_batch}
        module = self.teacher.module
        self.teacher_probe = probe(module, self.teacher_layers, sample_batch, task=self.task)
        self.student_probe = probe(student, self.student_layers, sample_batch, task=self.task)
        feeding = set(
            feeding_parameters(student, self.student_layers, sample_batch, task=self.task)
        )
        if not feeding:
            raise ConfigError(
                f"no student parameter feeds the layers {self.student_layers}; tap layers "
                "that come after at least one trainable layer"
            )
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(name in feeding)

    def features(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(student features, teacher features)`` of a batch by layer name; the teacher's
        are computed without a graph. Neither forward runs past its last tapped layer."""
        teacher = self.teacher.features(batch, self.teacher_layers)
        args, kwargs = self.task.inputs(batch)
        with Taps(self.student, self.student_layers) as taps:
            student = taps.run_until_captured(*args, **kwargs)
        return student, teacher

    def release(self) -> None:
        """Let every student parameter train again (after phase 1)."""
        self.student.requires_grad_(True)

    def no_logits(self, batch: Batch) -> torch.Tensor:
        """What phase 1 reports as ``Output.logits``: the forward stops before the head, so
        there are none; an empty ``[N, 0]`` tensor."""
        targets = self.task.targets(batch)
        return targets.new_zeros((targets.shape[0], 0), dtype=torch.float32)

    def second_phase(self) -> Distiller:  # pragma: no cover - every subclass overrides it
        """The phase-2 Distiller, on the whole student (calls :meth:`release`)."""
        raise NotImplementedError


class FeaturePhaseSpec(KDFields, TeacherStudentSpec):
    """Recipe fields and checks shared by the ``fitnets`` and ``fsp`` stages: the teacher, the
    student and phase 2's KD settings. Subclasses build their phase-1 Distiller in
    :meth:`build_phase_one` and list their phases."""

    def build_phase_one(self, ctx: StageContext) -> FeaturePhase:  # pragma: no cover
        raise NotImplementedError

    def phase_one(self, ctx: StageContext) -> FeaturePhase:
        """The phase-1 Distiller on ``ctx``'s models; a configuration error names the stage."""
        try:
            return self.build_phase_one(ctx)
        except ConfigError as exc:
            raise ConfigError(f"stage {self.stage_name()!r} ({self.method}): {exc}") from None

    def check(self, ctx: StageContext) -> None:
        # A dry build on the untrained models: layer names, defaults, shapes and channels.
        with untouched(ctx.models[self.teacher], ctx.models[self.student]):
            self.phase_one(ctx)
