"""What FitNets and FSP share: a first stage on intermediate features, then one on the task.

Stage 1 is a :class:`FeatureStage`: the student learns features of a frozen teacher, taken by
layer name with :class:`~distill.taps.Taps`. Only the student parameters that feed its tapped
layers train, and both forwards stop right after the last tapped layer, so the student's later
layers (weights *and* BatchNorm running statistics) come out of stage 1 exactly as they went
in. Stage 2 is an ordinary Distiller on the whole student.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pydantic import ValidationError, ValidationInfo
from torch import nn

from ..config import TrainConfig, deep_merge
from ..errors import ConfigError, did_you_mean
from ..taps import Taps, feeding_parameters, probe, resolve_module
from .base import Distiller, StageContext, TeacherStudentSpec, freeze


def merged_train(train: TrainConfig, overrides: dict[str, Any] | None) -> TrainConfig:
    """``train`` with ``overrides`` merged in (nested sections key by key), validated.

    Raises:
        ValueError: a merged field is invalid; each problem is named by its dotted path.
    """
    if not overrides:
        return train

    try:
        return TrainConfig.model_validate(deep_merge(train.model_dump(), overrides))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "value"
            if err["type"] == "extra_forbidden":
                known = TrainConfig.model_fields if len(err["loc"]) == 1 else ()
                problems.append(f"{where}: unknown key{did_you_mean(where, known)}")
            else:
                message = err["msg"][:1].lower() + err["msg"][1:]
                message = message.replace("input should be", "must be")
                problems.append(f"{where}: {message} (got {err['input']!r})")
        raise ValueError("; ".join(problems)) from None


def check_overrides(cls: type, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    """Field validator of a stage's phase overrides (``hint:``, ``fsp:``): they must make a
    valid :class:`TrainConfig` when merged over the stage's ``train`` (validated before)."""
    train = info.data.get("train")
    if train is not None:
        merged_train(train, value)
    return value


def check_kd_settings(temperature: float, alpha: float) -> None:
    """Stage 2's KD settings, checked when stage 1 is built rather than after it ran."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


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


@contextmanager
def untouched(*models: nn.Module) -> Iterator[None]:
    """Undo, on exit, what building a Distiller does to ``models``: train/eval modes and
    ``requires_grad`` flags (weights are not touched by building). For dry runs in
    :meth:`StageSpec.check <distill.methods.StageSpec.check>`."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    flags = [(p, p.requires_grad) for model in models for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


class FeatureStage(Distiller):
    """Base of the first stage of FitNets and FSP.

    On construction it probes both models once on ``sample_inputs`` (eval mode, nothing
    changes) and leaves ``requires_grad`` on only for the student parameters that feed
    ``student_layers``; :meth:`release` (which the stage-2 Distillers also do) turns it back
    on for the whole student. :meth:`features` returns the tapped features of a batch.

    Attributes:
        student_probe: the student's features on ``sample_inputs`` (for sizing adapters).
        teacher_probe: the teacher's.
    """

    teacher_names = ("teacher",)

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        sample_inputs: torch.Tensor,
        student_layers: Sequence[str],
        teacher_layers: Sequence[str],
    ) -> None:
        super().__init__()
        if teacher is student:
            raise ValueError("the student cannot be its own teacher")
        self.teacher = freeze(teacher)
        self.student = student
        self.student_layers = list(dict.fromkeys(student_layers))
        self.teacher_layers = list(dict.fromkeys(teacher_layers))
        self.teacher_probe = probe(teacher, self.teacher_layers, sample_inputs)
        self.student_probe = probe(student, self.student_layers, sample_inputs)
        feeding = set(feeding_parameters(student, self.student_layers, sample_inputs))
        if not feeding:
            raise ConfigError(
                f"no student parameter feeds the layers {self.student_layers}; tap layers "
                "that come after at least one trainable layer"
            )
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(name in feeding)

    def features(
        self, inputs: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(student features, teacher features)`` of a batch by layer name; the teacher's
        are computed without a graph. Neither forward runs past its last tapped layer."""
        with torch.no_grad(), Taps(self.teacher, self.teacher_layers) as taps:
            teacher = taps.run_until_captured(inputs)
        with Taps(self.student, self.student_layers) as taps:
            student = taps.run_until_captured(inputs)
        return student, teacher

    def release(self) -> None:
        """Let every student parameter train again (after stage 1)."""
        self.student.requires_grad_(True)

    def no_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """What stage 1 reports as ``Output.logits``: the forward stops before the head, so
        there are none; an empty ``[N, 0]`` tensor."""
        return inputs.new_zeros((inputs.shape[0], 0))

    def second_stage(self) -> Distiller:  # pragma: no cover - every subclass overrides it
        """The stage-2 Distiller, on the whole student (calls :meth:`release`)."""
        raise NotImplementedError


class FeatureStageSpec(TeacherStudentSpec):
    """Recipe fields and checks shared by the ``fitnets`` and ``fsp`` stages: the teacher, the
    student and stage 2's KD settings. Subclasses build their stage-1 Distiller in
    :meth:`build_stage_one` and list their phases."""

    def build_stage_one(self, ctx: StageContext) -> FeatureStage:  # pragma: no cover
        raise NotImplementedError

    def stage_one(self, ctx: StageContext) -> FeatureStage:
        """The stage-1 Distiller on ``ctx``'s models; a configuration error names the stage."""
        try:
            return self.build_stage_one(ctx)
        except ConfigError as exc:
            raise ConfigError(f"stage {self.stage_name()!r} ({self.method}): {exc}") from None

    def check(self, ctx: StageContext) -> None:
        # A dry build on the untrained models: layer names, defaults, shapes and channels.
        with untouched(ctx.models[self.teacher], ctx.models[self.student]):
            self.stage_one(ctx)
