"""Teacher-assistant knowledge distillation (TAKD; Mirzadeh et al., AAAI 2020).

A large gap between teacher and student hurts KD; TAKD bridges it with a chain
``teacher -> assistant_1 -> ... -> student`` in which each model is trained by plain KD from
the one before it. In a recipe, one ``takd`` stage runs the whole chain, one phase per link
(``link1``, ``link2``, ...), so an interrupted chain resumes at the link and epoch where it
stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator
from torch import nn

from ..checks import (
    check_distinct_modules,
    check_fraction,
    check_temperature,
    fraction_problem,
    positive_problem,
)
from ..config import TrainConfig, merged_train
from ..errors import ConfigError
from ..models.zoo import family
from ..report import ALONE_NOTE, alone_cells, baselines, metric_cells
from ..tasks import Task
from ._logits import check_standardize
from .base import (
    DemoEntry,
    Phase,
    SoftLossFields,
    StageContext,
    StageSpec,
    TeacherFields,
    check_same_outputs,
)
from .kd import KD

R = TypeVar("R")


def check_distinct(names: list[str], where: str) -> list[str]:
    """Return ``names``; raise ``ValueError`` (a recipe validation error) if one repeats."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"each model may appear once in {where}; repeated: {repeated}")
    return names


def _count_message(links: int, given: int) -> str:
    return (
        f"one number, or a list of one per link ({links} for a chain of {links + 1} models) "
        f"is needed; {given} given"
    )


def per_link(
    name: str, value: float | Sequence[float], links: int, check: Callable[[float, str], float]
) -> list[float]:
    """``value`` repeated for every link, or the list given (which must have one per link),
    each value passed through ``check``."""
    if isinstance(value, (int, float)):
        values = [value] * links
    else:
        values = list(value)
        if len(values) != links:
            raise ConfigError(f"{name}: {_count_message(links, len(values))}")
    return [check(v, name) for v in values]


class TAKD:
    r"""A teacher-assistant chain: each model is distilled from the one before it, in order.

    Link ``i`` (0-based) is ``KD(chain[i], chain[i + 1], temperature[i], alpha[i])``:

    .. math::
        \mathcal{L}_i = (1-\alpha_i)\,\mathrm{CE}(z_{i+1}, y)
            + \alpha_i\,T_i^2\,\mathrm{KL}\big(\mathrm{softmax}(z_i/T_i)\,\|\,
                                               \mathrm{softmax}(z_{i+1}/T_i)\big)

    TAKD is a plan, not a loss: it hands out one :class:`~distill.methods.KD` per link, to
    train with any loop, one after another::

        takd = TAKD([teacher, assistant, student], temperature=[4.0, 2.0], alpha=0.9)
        for kd in takd.links():        # built one at a time, after the previous link trained
            train(kd)                  # e.g. out = kd(x, y); out.loss.backward(); ...

    A link's KD is built only when asked for, because building it freezes its teacher (the
    previous link's student), which must have finished training by then.

    Args:
        chain: ``[teacher, assistant_1, ..., student]``, at least two modules; the first must be
            trained already.
        temperature: ``T > 0``, one for every link or a list of one per link.
        alpha: weight of the soft term in [0, 1], one or a list of one per link.
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        chain: Sequence[nn.Module],
        temperature: float | Sequence[float] = 4.0,
        alpha: float | Sequence[float] = 0.9,
        *,
        task: str | Task = "classification",
    ) -> None:
        chain = list(chain)
        if len(chain) < 2:
            raise ConfigError(f"a TAKD chain needs at least 2 models, got {len(chain)}")
        check_distinct_modules(chain, "a TAKD chain")
        self.chain = chain
        self.temperatures = per_link("temperature", temperature, len(chain) - 1, check_temperature)
        self.alphas = per_link("alpha", alpha, len(chain) - 1, check_fraction)
        self.task = task

    def __len__(self) -> int:
        """The number of links (models in the chain minus one)."""
        return len(self.chain) - 1

    @property
    def teacher(self) -> nn.Module:
        return self.chain[0]

    @property
    def student(self) -> nn.Module:
        return self.chain[-1]

    def link(self, index: int) -> KD:
        """The KD of link ``index`` (0-based): ``chain[index]`` teaches ``chain[index + 1]``."""
        if not 0 <= index < len(self):
            raise IndexError(f"link index must be in [0, {len(self) - 1}], got {index}")
        return KD(
            self.chain[index],
            self.chain[index + 1],
            self.temperatures[index],
            self.alphas[index],
            task=self.task,
        )

    def links(self, start: int = 0) -> Iterator[KD]:
        """The links' KD distillers in order, each built when the iteration reaches it.

        ``start`` skips the first links (e.g. ``start=1`` when the assistant is already
        trained).
        """
        for index in range(start, len(self)):
            yield self.link(index)

    def run(self, fit: Callable[[KD], R], start: int = 0) -> list[R]:
        """Train the chain: call ``fit(kd)`` for every link from ``start`` on, in order, and
        return what each call returned."""
        return [fit(kd) for kd in self.links(start)]


class TAKDStage(TeacherFields, SoftLossFields, StageSpec):
    """``{method: takd, chain: [teacher, assistant, ..., student], temperature, alpha}``.

    - ``temperature`` / ``alpha``: one value for every link, or a list of one per link.
    - ``link_train``: optional list of one mapping per link overriding the stage's training
      settings for that link (``[{epochs: 20}, {}]``); ``{}`` or ``null`` keeps them.
    - the teacher fields of :class:`~distill.methods.base.TeacherFields` (``cache: teacher``...)
      apply to every link, each with its own cache.

    One phase per link, named ``link1``, ``link2``, ... A link whose student is already trained
    when the stage starts (by an earlier stage, or loaded from ``models.NAME.checkpoint``) is
    skipped and that model is kept as is; after :meth:`phases`, :meth:`produces` lists only the
    models the stage really trains.
    """

    method: Literal["takd"] = "takd"
    chain: list[str] = Field(min_length=2)
    temperature: float | list[float] = 4.0
    alpha: float | list[float] = 0.9
    link_train: list[dict[str, Any] | None] | None = None

    _skipped: set[str] = PrivateAttr(default_factory=set)

    # The student learns from an assistant (cnn-4, between resnet20 and cnn-2 in size, as
    # assistant_ladder("resnet20", "cnn-2") picks) that learnt from the teacher.
    demo = DemoEntry(
        student="student_takd",
        stage={
            "method": "takd",
            "chain": ["teacher", "assistant", "student_takd"],
            "temperature": 4.0,
            "alpha": 0.9,
        },
        models={"assistant": "cnn-4"},
    )

    @field_validator("chain")
    @classmethod
    def _distinct_models(cls, chain: list[str]) -> list[str]:
        return check_distinct(chain, "a chain")

    @field_validator("temperature", "alpha", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return _number_or_numbers(value)

    @field_validator("temperature")
    @classmethod
    def _temperatures(cls, value: float | list[float], info: ValidationInfo) -> Any:
        return _check_each(value, positive_problem, "temperature", info)

    @field_validator("alpha")
    @classmethod
    def _alphas(cls, value: float | list[float], info: ValidationInfo) -> Any:
        return _check_each(value, fraction_problem, "alpha", info)

    @field_validator("link_train")
    @classmethod
    def _link_train_fits(
        cls, value: list[dict[str, Any] | None] | None, info: ValidationInfo
    ) -> list[dict[str, Any] | None] | None:
        chain, train = info.data.get("chain"), info.data.get("train")
        if value is None or chain is None:
            return value
        if len(value) != len(chain) - 1:
            raise ValueError(
                f"one entry per link is needed ({len(chain) - 1} for a chain of "
                f"{len(chain)} models); {len(value)} given"
            )
        if train is not None:
            for index, override in enumerate(value):
                _link_config(train, override, index)
        return value

    def links(self) -> list[tuple[str, str]]:
        """``(teacher, student)`` model names of every link, in order."""
        return list(itertools.pairwise(self.chain))

    def link_configs(self) -> list[TrainConfig]:
        """The training settings of every link (the stage's, with ``link_train`` merged)."""
        overrides = self.link_train or [None] * len(self.links())
        return [_link_config(self.train, o, i) for i, o in enumerate(overrides)]

    def produces(self) -> list[str]:
        return [name for name in self.chain[1:] if name not in self._skipped]

    def uses(self) -> list[str]:
        return [self.chain[0]]

    def references(self) -> list[tuple[str, str]]:
        return [(f"chain.{i}", name) for i, name in enumerate(self.chain)]

    def stage_name(self) -> str:
        return self.name or self.chain[-1]

    def phases(self, ctx: StageContext) -> list[Phase]:
        self._skipped = {name for name in self.chain[1:] if name in ctx.trained}
        links = len(self.links())
        temperatures = per_link("temperature", self.temperature, links, check_temperature)
        alphas = per_link("alpha", self.alpha, links, check_fraction)

        def build(index: int) -> KD:
            teacher, student = self.links()[index]
            return KD(
                ctx.teacher(teacher, self, temperatures[index]),
                ctx.models[student],
                temperatures[index],
                alphas[index],
                task=ctx.task,
                **self.soft_loss_options(),
            )

        return [
            Phase(f"link{index + 1}", lambda index=index: build(index), [student], config)
            for index, ((_, student), config) in enumerate(
                zip(self.links(), self.link_configs(), strict=True)
            )
            if student not in self._skipped
        ]

    def check(self, ctx: StageContext) -> None:
        check_standardize(self)
        where = f"stage {self.stage_name()!r} (takd): chain"
        check_same_outputs(ctx, where, self.chain, self.vocab == "shared")

    def summary_fields(self) -> dict[str, Any]:
        fields = super().summary_fields()
        links = len(self.links())
        temperatures = per_link("temperature", self.temperature, links, check_temperature)
        alphas = per_link("alpha", self.alpha, links, check_fraction)
        configs = self.link_configs()
        fields["links"] = [
            {
                "phase": f"link{index + 1}",
                "teacher": teacher,
                "student": student,
                "temperature": temperatures[index],
                "alpha": alphas[index],
                "epochs": configs[index].epochs,
                "skipped": student in self._skipped,
            }
            for index, (teacher, student) in enumerate(self.links())
        ]
        return fields

    @classmethod
    def report_section(cls, summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
        return _takd_section(summary, stages)


def _check_each(
    value: float | list[float],
    problem_of: Callable[[Any], str | None],
    name: str,
    info: ValidationInfo,
) -> float | list[float]:
    """Each value must pass ``problem_of``, and a list must hold one value per link of the
    chain (validated before this field)."""
    for v in [value] if isinstance(value, (int, float)) else value:
        problem = problem_of(v)
        if problem is not None:
            raise ValueError(f"each {name} {problem} (found {v})")
    chain = info.data.get("chain")
    if chain is not None and isinstance(value, list) and len(value) != len(chain) - 1:
        raise ValueError(_count_message(len(chain) - 1, len(value)))
    return value


def _number_or_numbers(value: Any) -> Any:
    """One error for a value that is neither a number nor a list of numbers (instead of one per
    branch of the union type)."""

    def is_number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_number(value) or (isinstance(value, list) and value and all(map(is_number, value))):
        return value
    raise ValueError("must be a number or a non-empty list of numbers (one per link)")


def _link_config(train: TrainConfig, override: dict[str, Any] | None, index: int) -> TrainConfig:
    """``train`` with one link's overrides merged in (nested mappings merge key by key)."""
    try:
        return merged_train(train, override)
    except ValueError as exc:
        raise ValueError(f"entry {index} (link {index + 1}): {exc}") from None


# --- choosing assistants ---------------------------------------------------------------------

def _parameters(arch: str, num_classes: int, in_channels: int) -> int:
    from ..models import count_parameters, create

    # Built on the meta device: only the shapes are needed, no memory nor initialisation cost.
    with torch.device("meta"):
        return count_parameters(create(arch, num_classes=num_classes, in_channels=in_channels))


def assistant_ladder(
    teacher: str,
    student: str,
    assistants: int = 1,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
) -> list[str]:
    """A TAKD chain of zoo architectures, ``[teacher, assistant_1, ..., student]``.

    The assistants come from the student's family (``cnn-N``, ``resnetN``, ``resnetNx4`` or
    ``wrn-D-K``) and have parameter counts between the student's and the teacher's; they are
    the ones closest to ``assistants`` evenly spaced sizes between the two (the TAKD paper
    finds assistants of middle size work best). Examples::

        assistant_ladder("cnn-10", "cnn-2")                 # ['cnn-10', 'cnn-6', 'cnn-2']
        assistant_ladder("resnet20", "cnn-2")               # ['resnet20', 'cnn-4', 'cnn-2']
        assistant_ladder("cnn-10", "cnn-2", assistants=2)   # [..., 'cnn-8', 'cnn-6', ...]

    Args:
        teacher: zoo name of the teacher's architecture.
        student: zoo name of the student's architecture.
        assistants: how many assistants (>= 1).
        num_classes: classes of the task (sizes depend a little on it).
        in_channels: input channels.

    Raises:
        ConfigError: an unknown architecture, a student not smaller than the teacher, or fewer
            candidates than ``assistants``.
    """
    if isinstance(assistants, bool) or not isinstance(assistants, int) or assistants < 1:
        raise ConfigError(f"assistants must be an integer >= 1, got {assistants!r}")
    big = _parameters(teacher, num_classes, in_channels)
    small = _parameters(student, num_classes, in_channels)
    if small >= big:
        raise ConfigError(
            f"the student {student!r} ({small:,} parameters) must be smaller than the teacher "
            f"{teacher!r} ({big:,} parameters)"
        )
    sizes = {
        name: _parameters(name, num_classes, in_channels)
        for name in family(student, larger=teacher)
    }
    candidates = sorted(
        (name for name, size in sizes.items() if small < size < big and name != teacher),
        key=lambda name: -sizes[name],
    )
    if len(candidates) < assistants:
        found = ", ".join(candidates) or "none"
        raise ConfigError(
            f"{assistants} assistant(s) asked for between {teacher!r} and {student!r}, but only "
            f"{len(candidates)} architecture(s) of the student's family lie between them in "
            f"size ({found}); ask for fewer assistants or choose a larger teacher"
        )
    targets = [big - (big - small) * j / (assistants + 1) for j in range(1, assistants + 1)]
    chosen: list[str] = []
    for target in targets:
        nearest = min(
            (name for name in candidates if name not in chosen),
            key=lambda name: abs(sizes[name] - target),
        )
        chosen.append(nearest)
    return [teacher, *sorted(chosen, key=lambda name: -sizes[name]), student]


# --- report.md section ------------------------------------------------------------------------


def _takd_section(summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    has_test = "test" in summary["data"]
    alone = baselines(summary)
    split = ["val", "test"] if has_test else ["val"]
    header = ["link", "teacher → model", "arch", "T", "α"]
    header += [f"after distillation ({s})" for s in split] + [f"alone ({s})" for s in split]
    header += [f"KD from the chain's teacher ({s})" for s in split]
    lines = ["", "## Teacher-assistant chains (TAKD)"]
    for stage in stages:
        chain = stage.get("chain", [])
        lines += ["", f"Stage `{stage['name']}`: {' → '.join(chain)}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        start = chain[0] if chain else None
        direct = baselines(summary, "kd", teacher=start) if start else {}
        if start is not None:
            arch = summary["models"].get(start, {}).get("arch", "")
            row = ["start", start, arch, "—", "—"]
            row += metric_cells(summary, start, has_test)
            row += alone_cells(summary, start, alone, has_test)
            row += ["—"] * len(split)
            lines.append("| " + " | ".join(row) + " |")
        for link in stage.get("links", []):
            student = link["student"]
            arch = summary["models"].get(student, {}).get("arch", "")
            note = " (already trained: kept)" if link.get("skipped") else ""
            row = [
                link["phase"],
                f"{link['teacher']} → {student}{note}",
                arch,
                f"{link['temperature']:g}",
                f"{link['alpha']:g}",
            ]
            row += metric_cells(summary, student, has_test, stage)
            row += alone_cells(summary, student, alone, has_test)
            row += alone_cells(summary, student, direct, has_test)
            lines.append("| " + " | ".join(row) + " |")
    note = (
        "*KD from the chain's teacher*: a model of the same architecture distilled directly "
        "from the chain's first model by a `kd` stage of this recipe, to see whether the "
        "assistants helped."
    )
    return [*lines, "", ALONE_NOTE, "", note]
