"""The Distiller contract, and how a recipe stage turns into training phases.

A :class:`Distiller` is an ``nn.Module`` whose ``forward(inputs, targets)`` returns an
:class:`Output` with the scalar ``loss`` to back-propagate. Any plain PyTorch loop can use one::

    out = method(x, y)
    out.loss.backward()

A recipe stage (a :class:`StageSpec`) describes one or more :class:`Phase` objects; each phase
is trained by the trainer on its own. Methods never run loops themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ..cache import CacheSettings
from ..config import Strict, TrainConfig


@dataclass
class Output:
    """What a Distiller returns for one batch.

    Attributes:
        loss: the scalar to back-propagate.
        parts: weighted loss terms by name (``"ce"``, ``"kd"``, ...) for logging; they sum to
            ``loss``.
        logits: the student's logits ``[N, C]`` (a list, one per model, for a cohort).
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    logits: torch.Tensor | list[torch.Tensor]


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output.

    A tensor is returned as is; an object with a ``logits`` attribute or key (Hugging Face
    outputs) gives that; a tuple or list gives its first element.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; return a "
        "tensor, a tuple whose first item is the logits, or an object with a .logits field"
    )


def freeze(model: nn.Module) -> nn.Module:
    """Make ``model`` a teacher: eval mode and no parameter requires a gradient."""
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    """Base class of every method.

    Subclasses register their frozen models' attribute names in ``teacher_names``; those are
    kept in eval mode, never yield parameters from :meth:`trainable_parameters`, and are left
    out of :meth:`trainable_state_dict` (checkpoints).
    """

    teacher_names: ClassVar[tuple[str, ...]] = ()

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Output:  # pragma: no cover
        raise NotImplementedError

    def teachers(self) -> list[nn.Module]:
        """The frozen models (never optimised)."""
        found = [getattr(self, name, None) for name in self.teacher_names]
        return [m for m in found if isinstance(m, nn.Module)]

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for teacher in self.teachers():
            teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Students' and adapters' parameters; never a teacher's."""
        frozen = {id(p) for t in self.teachers() for p in t.parameters()}
        for p in self.parameters():
            if id(p) not in frozen and p.requires_grad:
                yield p

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer: the trainer gives each group its own optimizer and
        schedule (a cohort method returns one group per member). Default: one group."""
        return {"all": list(self.trainable_parameters())}

    def step_losses(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> Iterator[tuple[str, Output]] | None:
        """Optional: for methods that update their groups one after another within a step.

        Return a generator yielding ``(group, output)``; the trainer back-propagates
        ``output.loss`` and steps that group's optimizer before asking for the next item, so
        later items see the updated weights. Return ``None`` (the default) to use
        :meth:`forward` with one joint update.
        """
        return None

    def epoch_end(self) -> None:
        """Called by the trainer after each epoch's last step, before its checkpoint (e.g. to
        flush a teacher cache to disk)."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the teachers' entries."""
        prefixes = tuple(f"{name}." for name in self.teacher_names)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        prefixes = tuple(f"{name}." for name in self.teacher_names)
        missing = [k for k in missing if not k.startswith(prefixes)]
        if missing or unexpected:
            raise KeyError(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")


@dataclass
class StageContext:
    """What a stage needs to build its phases.

    Attributes:
        models: every named model of the recipe (shared objects: a phase that trains a model
            changes it for later phases).
        sample_inputs: one batch of training inputs, for methods that size adapters by a probe.
        num_classes: classes of the data.
        seed: the recipe's seed.
        trained: names of the models already trained by earlier stages or loaded from a
            checkpoint when this stage starts (a method may skip retraining them).
    """

    models: dict[str, nn.Module]
    sample_inputs: torch.Tensor
    num_classes: int
    seed: int = 0
    trained: set[str] = field(default_factory=set)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Phase:
    """One training run inside a stage.

    Attributes:
        name: unique within the stage (``"train"``, ``"kd"``, ``"hint"``, ``"link1"``...).
        build: makes the Distiller when the phase starts (late, so it sees the weights that
            earlier phases trained).
        trains: names of the models this phase changes; they are evaluated every epoch and
            checkpointed.
        train: the training settings of this phase.
        after: optional hook run after the phase finishes (e.g. to keep part of a model).
        cache: when set, the pipeline attaches a :class:`~distill.cache.TeacherCache` to the
            built method (which must have ``teacher`` and ``cache`` attributes, like
            :class:`~distill.methods.KD`) and feeds it batches with cache keys.
    """

    name: str
    build: Callable[[], Distiller]
    trains: list[str]
    train: TrainConfig
    after: Callable[[Distiller], None] | None = None
    cache: CacheSettings | None = None


class TeacherCacheFields(Strict):
    """Recipe fields of the stages whose teacher is fixed (``kd``, FitNets' KD phase, TAKD
    links): the teacher-output cache and teacher precision.

    - ``cache``: ``none`` (default) or ``teacher``: compute the teacher's outputs once per
      sample view and reuse them in later epochs.
    - ``cache_views``: views kept per sample when the data is randomly augmented (V).
    - ``cache_store``: ``memory`` or ``disk`` (memory-mapped files under the run directory,
      reused by ``--resume``).
    - ``cache_dtype``: ``float16`` (default) or ``float32``.
    - ``cache_topk``: keep only the k largest logits (the rest of the probability mass is
      spread uniformly), for large vocabularies.
    - ``teacher_precision``: ``fp32``, or ``bf16``/``fp16`` autocast for the teacher only.
    """

    cache: Literal["none", "teacher"] = "none"
    cache_views: int = Field(1, ge=1)
    cache_store: Literal["memory", "disk"] = "memory"
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_topk: int | None = Field(None, ge=1)
    teacher_precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def cache_settings(self) -> CacheSettings | None:
        """The cache this stage asked for, or ``None``."""
        if self.cache != "teacher":
            return None
        return CacheSettings(
            store=self.cache_store,
            dtype=self.cache_dtype,
            views=self.cache_views,
            topk=self.cache_topk,
        )


class StageSpec(Strict):
    """Fields common to every stage of a recipe.

    ``train`` holds the recipe's training defaults merged with the stage's own overrides (the
    recipe loader fills it in). Subclasses add their method's fields and implement
    :meth:`phases`, :meth:`produces` and :meth:`uses`.
    """

    method: str
    name: str | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    def produces(self) -> list[str]:
        """Models this stage trains."""
        raise NotImplementedError

    def uses(self) -> list[str]:
        """Models this stage needs already trained (teachers)."""
        return []

    def stage_name(self) -> str:
        """The stage's name in outputs: ``name`` if given, else the (last) trained model."""
        return self.name or self.produces()[-1]

    def phases(self, ctx: StageContext) -> list[Phase]:
        """The phases that carry out this stage, in order."""
        raise NotImplementedError

    def check(self, ctx: StageContext) -> None:
        """Validate the stage against the built models before anything trains (e.g. that
        layer names exist), so a mistake in the last stage does not surface after hours of
        training. Raise :class:`~distill.errors.ConfigError` naming the field."""

    def summary_fields(self) -> dict[str, Any]:
        """Method settings worth showing in ``summary.json`` (e.g. temperature, alpha)."""
        skip = {"method", "name", "train"} | set(StageSpec.model_fields)
        if self.model_dump().get("cache", "none") == "none":
            skip |= set(TeacherCacheFields.model_fields) - {"teacher_precision"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}


class TeacherStudentSpec(StageSpec):
    """Fields of the stages that distil one student from one teacher (``kd``, ``fitnets``,
    ``fsp``): ``teacher``, ``student``, and the KD ``temperature`` (> 0) and ``alpha``
    (in [0, 1]) of their KD loss."""

    teacher: str
    student: str
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1)

    def produces(self) -> list[str]:
        return [self.student]

    def uses(self) -> list[str]:
        return [self.teacher]
