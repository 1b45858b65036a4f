"""The Distiller contract, and how a recipe stage turns into training phases.

A :class:`Distiller` is an ``nn.Module`` whose ``forward(batch)`` returns an :class:`Output`
with the scalar ``loss`` to back-propagate. Any plain PyTorch loop can use one::

    out = method(batch)        # a dict batch; for image classification also method(x, y)
    out.loss.backward()

A recipe stage (a :class:`StageSpec`) describes one or more :class:`Phase` objects; each phase
is trained by the training loop on its own. Methods never run loops themselves.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ..cache import CacheSettings
from ..checks import Name, Temperature, Weight, check_distinct_modules
from ..config import Strict, TrainConfig
from ..devices import model_device, to_device
from ..errors import ConfigError, did_you_mean
from ..tasks import Batch, Task, get_task
from ..teachers import Teacher, as_teacher


@dataclass
class Output:
    """What a Distiller returns for one batch.

    Attributes:
        loss: the scalar to back-propagate.
        parts: weighted loss terms by name (``"ce"``, ``"kd"``, ...) for logging; they sum to
            ``loss``, but for timings, whose names end in ``_seconds`` (``"gen_seconds"``: the
            seconds a method spent generating for the batch, shown beside the loss).
        logits: the student's logits (``[N, C]``, or ``[N, L−1, V]`` for a causal LM); a list,
            one per model, for a cohort.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    logits: torch.Tensor | list[torch.Tensor]

    @classmethod
    def from_parts(
        cls, parts: dict[str, torch.Tensor], logits: torch.Tensor | list[torch.Tensor]
    ) -> Output:
        """The Output whose loss is the sum of ``parts`` in their order (timings, named
        ``*_seconds``, left out), with the parts detached for logging."""
        loss = functools.reduce(
            operator.add, [v for k, v in parts.items() if not k.endswith("_seconds")]
        )
        return cls(loss=loss, parts={k: v.detach() for k, v in parts.items()}, logits=logits)


@dataclass
class Progress:
    """Where training is, for methods with warm-ups or schedules of their own. The training
    loop sets ``method.progress`` before every step and saves it in checkpoints.

    Attributes:
        epoch: the epoch being trained, from 0.
        step: optimizer steps taken so far in this phase (all epochs), from 0.
        epochs: epochs in the phase.
        steps_per_epoch: optimizer steps per epoch.
    """

    epoch: int = 0
    step: int = 0
    epochs: int = 1
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        """Share of the phase's optimizer steps taken, in [0, 1]."""
        return min(1.0, self.step / max(1, self.epochs * self.steps_per_epoch))


def as_batch(batch: Batch | torch.Tensor, targets: torch.Tensor | None = None) -> Batch:
    """``batch`` itself, or ``{"inputs": batch, "targets": targets}`` for the ``(x, y)``
    shorthand of image classification."""
    if not isinstance(batch, Mapping):
        return {"inputs": batch, "targets": targets}
    if targets is not None:
        raise TypeError("pass either a dict batch or (inputs, targets), not both")
    return batch


def check_one_after_another(grad_accum_steps: int, where: str = "grad_accum_steps") -> None:
    """A method that updates its models one after another within a step
    (:meth:`Distiller.step_losses`) steps after every batch: no gradient accumulation."""
    if grad_accum_steps != 1:
        raise ConfigError(
            f"{where}: must be 1 for a method that updates its models one after another, got "
            f"{grad_accum_steps}"
        )


class Distiller(nn.Module):
    """Base class of every method.

    Args:
        task: how models are called on a batch and what their logits are (a
            :class:`~distill.tasks.Task` or its name; default ``classification``).

    The frozen models are :class:`~distill.teachers.Teacher` submodules: they stay in eval
    mode, never yield parameters from :meth:`trainable_parameters`, and are left out of
    :meth:`trainable_state_dict` (checkpoints).
    """

    def __init__(self, task: str | Task = "classification") -> None:
        super().__init__()
        self.task = get_task(task)
        self.progress = Progress()

    def set_pair(
        self, teacher: nn.Module | Teacher, student: nn.Module, *, trainable: bool = True
    ) -> None:
        """Set ``self.teacher`` (``teacher`` as a :class:`~distill.teachers.Teacher` of this
        task: frozen, eval mode) and ``self.student`` (set to require gradients unless
        ``trainable`` is false), refusing a student that is its own teacher."""
        self.teacher = as_teacher(teacher, self.task)
        check_distinct_modules([self.teacher.module, student], type(self).__name__)
        self.student = student.requires_grad_(True) if trainable else student

    def __call__(self, batch: Batch | torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        """``method(batch)``; for image classification ``method(x, y)`` is shorthand for
        ``method({"inputs": x, "targets": y})``. A batch of no sample, or of integer images, is
        a ``ValueError`` (:meth:`Task.check_batch <distill.tasks.Task.check_batch>`)."""
        batch = as_batch(batch, targets)
        self.task.check_batch(batch)
        return super().__call__(batch)

    def forward(self, batch: Batch) -> Output:  # pragma: no cover - every method overrides it
        raise NotImplementedError

    def teachers(self) -> list[Teacher]:
        """The frozen models (never optimised)."""
        return [m for m in self.modules() if isinstance(m, Teacher)]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Students' and adapters' parameters; never a teacher's."""
        frozen = {id(p) for t in self.teachers() for p in t.parameters()}
        for p in self.parameters():
            if id(p) not in frozen and p.requires_grad:
                yield p

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer: the training loop gives each group its own optimizer and
        schedule (a cohort method returns one group per member). Default: one group."""
        return {"all": list(self.trainable_parameters())}

    def step_losses(
        self, batch: Batch | torch.Tensor, targets: torch.Tensor | None = None
    ) -> Iterator[tuple[str, Output]] | None:
        """Optional: for methods that update their groups one after another within a step
        (``(x, y)`` works as for :meth:`__call__`).

        Return a generator yielding ``(group, output)``; the loop back-propagates
        ``output.loss`` and steps that group's optimizer before asking for the next item, so
        later items see the updated weights. Return ``None`` (the default) to use
        :meth:`forward` with one joint update.
        """
        return None

    def epoch_end(self) -> None:
        """Called by the loop after each epoch's last step, before its checkpoint: makes the
        teachers' output stores durable."""
        for teacher in self.teachers():
            teacher.flush()

    def _teacher_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{n}." for n, m in self.named_modules() if isinstance(m, Teacher) and n)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the teachers' entries."""
        prefixes = self._teacher_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        prefixes = self._teacher_prefixes()
        missing = [k for k in missing if not k.startswith(prefixes)]
        if missing or unexpected:
            raise KeyError(f"state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")


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


# --- recipe stages -----------------------------------------------------------------------------


@dataclass
class StageContext:
    """What a stage needs to build its phases.

    Attributes:
        models: every named model of the recipe (shared objects: a phase that trains a model
            changes it for later phases).
        sample_batch: a dict batch of a few training items, for methods that size adapters
            or check layers with a probe forward.
        task: the recipe's task.
        train_size: the number of training samples (batches' ``index`` values lie in
            ``[0, train_size)``), for methods that keep a memory per sample.
        seed: the recipe's seed.
        trained: names of the models already trained by earlier stages or loaded from a
            checkpoint when this stage starts (a method may skip retraining them).
        make_teacher: builds the :class:`Teacher` of a model with a stage's teacher settings
            (the pipeline's, which attaches output stores); default: a plain ``Teacher``.
        tokenizer: the text data's tokenizer (``None`` for images), for methods that generate.
    """

    models: dict[str, nn.Module]
    sample_batch: dict[str, Any]
    task: Task
    train_size: int = 0
    seed: int = 0
    trained: set[str] = field(default_factory=set)
    make_teacher: Callable[[str, TeacherFields | None, float], Teacher] | None = None
    tokenizer: Any = None

    def teacher(
        self, name: str, settings: TeacherFields | None = None, temperature: float = 1.0
    ) -> Teacher:
        """Model ``name`` as a teacher, with a stage's teacher settings (precision, cache);
        ``temperature`` is the one its loss uses (a top-k cache stores outputs at it)."""
        if self.make_teacher is not None:
            return self.make_teacher(name, settings, temperature)
        precision = settings.teacher_precision if settings is not None else "fp32"
        path = getattr(settings, "teacher_logits", None)
        if path is not None:
            from ..cache.offline import TeacherStore

            return Teacher(None, self.task, precision, store=TeacherStore(path))
        return Teacher(self.models[name], self.task, precision)

    def sample_logits(self, name: str) -> torch.Tensor:
        """Model ``name``'s logits on :attr:`sample_batch` (moved to the model's device), in
        eval mode and without a graph; the model's mode is restored."""
        model = self.models[name]
        batch = to_device(self.sample_batch, model_device(model))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.task.logits(model, batch)
        finally:
            model.train(was_training)


@dataclass
class Phase:
    """One training run inside a stage.

    Attributes:
        name: unique within the stage (``"train"``, ``"kd"``, ``"hint"``, ``"link1"``...).
        build: makes the Distiller when the phase starts (late, so it sees the weights that
            earlier phases trained).
        models: names of the models this phase changes; they are evaluated every epoch and
            checkpointed.
        config: the training settings of this phase.
        after: optional hook run after the phase finishes (e.g. to keep part of a model).
    """

    name: str
    build: Callable[[], Distiller]
    models: list[str]
    config: TrainConfig
    after: Callable[[Distiller], None] | None = None


@dataclass(frozen=True)
class DemoEntry:
    """How ``distill demo --methods NAME`` adds a method: the student it trains (a model of
    the demo's student architecture), the stage (whose teacher is the demo's ``teacher``),
    and any extra models by name and architecture."""

    student: str
    stage: dict[str, Any]
    models: dict[str, str] = field(default_factory=dict)


class TeacherFields(Strict):
    """Recipe fields of the stages whose teacher is fixed (``kd``, FitNets' KD phase, TAKD
    links): the teacher's precision and its output cache.

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


class TeacherLogitsFields(Strict):
    """``teacher_logits: PATH``: read the teacher's outputs from an offline store (top-k
    log-probabilities per token, written by ``distill cache build RECIPE --stage NAME --out
    PATH``; see :mod:`distill.cache.offline`) instead of running the teacher. The stage's
    teacher then never runs; the store must have been built by that teacher, with the recipe's
    tokenizer and training data, at the stage's temperature (a mismatch is refused, naming
    which)."""

    teacher_logits: str | None = None


class StageSpec(Strict):
    """Fields common to every stage of a recipe.

    ``train`` holds the recipe's training defaults merged with the stage's own overrides (the
    recipe loader fills it in). Subclasses add their method's fields and implement
    :meth:`phases`, :meth:`produces`, :meth:`uses` and :meth:`references`; they may add a
    ``report.md`` section (:meth:`report_section`) and a demo entry (``demo``).
    """

    method: str
    name: Name | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    #: How ``distill demo --methods`` adds this method (``None``: not in the demo).
    demo: ClassVar[DemoEntry | None] = None

    def produces(self) -> list[str]:
        """Models this stage trains."""
        raise NotImplementedError

    def uses(self) -> list[str]:
        """Models this stage needs already trained (teachers)."""
        return []

    def references(self) -> list[tuple[str, str]]:
        """``(field, model name)`` for every model the stage's fields name (``"chain.1"`` for a
        list item), so the recipe can check that each is defined."""
        raise NotImplementedError

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
        if self.model_dump().get("teacher_logits", "") is None:
            skip |= {"teacher_logits"}
        if self.model_dump().get("cache", "none") == "none":
            skip |= set(TeacherFields.model_fields) - {"teacher_precision"}
        return {k: v for k, v in self.model_dump().items() if k not in skip}

    @classmethod
    def report_section(cls, summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
        """Lines of this method's own ``report.md`` section, given the run's summary and the
        summaries of the stages that ran it (none by default)."""
        return []


class TeacherStudentSpec(StageSpec):
    """Fields of the stages that distil one student from one teacher: ``teacher`` and
    ``student``."""

    teacher: str
    student: str

    def produces(self) -> list[str]:
        return [self.student]

    def uses(self) -> list[str]:
        return [self.teacher]

    def references(self) -> list[tuple[str, str]]:
        return [("teacher", self.teacher), ("student", self.student)]


class SoftLoss(Strict):
    """``loss: {kind: jsd, beta: 0.5}``: which divergence a KD-style soft term takes (a kind of
    :data:`~distill.losses.DIVERGENCES`; see :func:`~distill.losses.divergence` for ``beta``
    and ``skew``)."""

    kind: str
    beta: Weight = 0.5
    skew: Weight = 0.1

    @field_validator("kind")
    @classmethod
    def _known(cls, kind: str) -> str:
        from ..losses import DIVERGENCES

        if kind not in DIVERGENCES:
            raise ValueError(
                f"unknown divergence {kind!r}{did_you_mean(kind, DIVERGENCES)}; allowed: "
                f"{', '.join(DIVERGENCES)}"
            )
        return kind


class SoftLossFields(Strict):
    """How a KD-style soft term compares the teacher's and the student's distributions:

    - ``loss``: ``null`` (default) for Hinton's KL(p ‖ q), or ``{kind, beta, skew}``
      (:class:`SoftLoss`);
    - ``vocab``: ``equal`` (teacher and student predict the same classes) or ``shared`` (cut
      both to the ids they share: vocabularies padded differently in one tokenizer family);
    - ``standardize``: z-score the logits before the temperature (Sun et al. 2024).
    """

    loss: SoftLoss | None = None
    vocab: Literal["equal", "shared"] = "equal"
    standardize: bool = False

    def soft_loss_options(self) -> dict[str, Any]:
        """These settings as keyword arguments of :class:`~distill.methods.KD`."""
        options: dict[str, Any] = {"vocab": self.vocab, "standardize": self.standardize}
        if self.loss is not None:
            options.update(loss=self.loss.kind, beta=self.loss.beta, skew=self.loss.skew)
        return options


class OnePhaseSpec(TeacherStudentSpec):
    """A stage that trains its student in one phase, named after the method, with the
    Distiller :meth:`distiller` builds. A configuration error names the stage, and
    :meth:`check` builds the Distiller once on the untrained models (a dry run: layer names,
    shapes and probes are checked before anything trains; modes and ``requires_grad`` flags
    are restored)."""

    def distiller(self, ctx: StageContext) -> Distiller:  # pragma: no cover - per method
        raise NotImplementedError

    def build(self, ctx: StageContext) -> Distiller:
        """:meth:`distiller`, its :class:`ConfigError` prefixed with the stage."""
        try:
            return self.distiller(ctx)
        except ConfigError as exc:
            raise ConfigError(f"stage {self.stage_name()!r} ({self.method}): {exc}") from None

    def check(self, ctx: StageContext) -> None:
        with untouched(ctx.models[self.teacher], ctx.models[self.student]):
            self.build(ctx)

    def phases(self, ctx: StageContext) -> list[Phase]:
        return [Phase(self.method, lambda: self.build(ctx), [self.student], self.train)]


class KDFields(SoftLossFields):
    """The KD loss's ``temperature`` (> 0), ``alpha`` (in [0, 1]) and soft-term settings
    (:class:`SoftLossFields`), for the stages that train with one (``kd``, and the second
    phase of ``fitnets`` and ``fsp``)."""

    temperature: Temperature = 4.0
    alpha: Weight = 0.9


def check_same_outputs(
    ctx: StageContext, where: str, names: Sequence[str], shared_vocab: bool = False
) -> None:
    """Raise :class:`ConfigError` unless the named models' logits on ``ctx.sample_batch`` have
    one shape (they must predict the same classes to teach each other; with ``shared_vocab``
    only the dimensions before the classes must agree).

    Run before any stage trains, so a mismatch in a late stage is not found after hours of
    training. Eval mode and no gradient: BatchNorm statistics and the RNG are left untouched.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name in names:
        shape = tuple(ctx.sample_logits(name).shape)
        shapes[name] = shape[:-1] if shared_vocab else shape
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        hint = "" if shared_vocab else (
            " (vocabularies of one tokenizer family padded differently: set vocab: shared)"
        )
        raise ConfigError(
            f"{where}: the models must predict the same classes, but their outputs on a batch "
            f"differ in shape: {listed}{hint}"
        )
