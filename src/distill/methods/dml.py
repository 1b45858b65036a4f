"""Deep mutual learning (DML; Zhang, Xiang, Hospedales and Lu, CVPR 2018).

A cohort of K networks, possibly of different architectures, learns together from scratch:
each one fits the labels and mimics the others' predictions. No pretrained teacher is needed,
although one may join as a fixed member.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..checks import Temperature, check_distinct_modules, check_temperature
from ..errors import ConfigError
from ..losses import mutual_terms
from ..report import ALONE_NOTE, alone_cells, baselines, markdown_table, metric_cells
from ..tasks import Batch, Task
from ..teachers import Teacher, as_teacher
from .base import (
    DemoEntry,
    Distiller,
    Output,
    Phase,
    StageContext,
    StageSpec,
    as_batch,
    check_one_after_another,
    check_same_outputs,
)
from .takd import check_distinct

UPDATES = ("joint", "sequential")


@contextmanager
def _buffers_kept(model: nn.Module) -> Iterator[None]:
    """Run the block on copies of the model's buffers (BatchNorm running statistics).

    A peer forward only supplies targets; it must not count as an extra BatchNorm update, so
    that every member's running statistics move once per step, as in joint mode. The original
    tensors are swapped out rather than restored in place, so a graph that saved them for its
    backward pass stays valid.
    """
    originals = [
        (module, name, buffer)
        for module in model.modules()
        for name, buffer in module.named_buffers(recurse=False)
    ]
    for module, name, buffer in originals:
        setattr(module, name, buffer.clone())
    try:
        yield
    finally:
        for module, name, buffer in originals:
            setattr(module, name, buffer)


class DML(Distiller):
    r"""Deep mutual learning: every cohort member learns from the labels and from its peers.

    For member :math:`k` of a cohort of :math:`K` (the teacher, if any, counts as a member):

    .. math::
        \mathcal{L}_k = \mathrm{CE}(z_k, y)
            + \frac{1}{K-1} \sum_{l \ne k} T^2\,\mathrm{KL}(p_l \,\|\, p_k),
        \quad p_l = \mathrm{softmax}(z_l / T)\ \text{detached}

    (:func:`~distill.losses.mutual_loss`). Parts, per member name: ``ce/NAME`` and ``kl/NAME``.

    Two ways to update, chosen by ``update``:

    - ``"joint"`` (default): one forward per member, then every member steps on its own loss
      (the peers are detached, so the gradient of :math:`\mathcal{L}_k` reaches member
      :math:`k` only). :meth:`forward` returns :math:`\sum_k \mathcal{L}_k`.
    - ``"sequential"``, as in the paper's code: members are updated one after another within a
      step, and each one's peer predictions are recomputed with the peers' latest weights (a
      member updated earlier in the step is forwarded again). :meth:`step_losses` yields
      ``(name, output)`` per member; the trainer back-propagates and steps that member's
      optimizer before asking for the next one. In a plain loop::

          for name, out in dml.step_losses(x, y):
              out.loss.backward()
              optimizers[name].step()
              optimizers[name].zero_grad()

      :meth:`forward` still computes the joint form (one forward each, for logging or a plain
      ``loss.backward()``).

    Each member has its own optimizer and schedule in the training loop
    (:meth:`optimizer_groups` gives one group per member name). A teacher joins as a fixed
    member: its predictions are targets of every learner; it is frozen, in eval mode, and never
    updated.

    Args:
        models: the learners, ``{name: module}`` or a list (named ``model0``, ``model1``...).
            Names must not contain ``"."``.
        temperature: ``T > 0`` of the KL term (paper: 1).
        update: ``"joint"`` or ``"sequential"``.
        teacher: an optional pretrained module (or :class:`~distill.teachers.Teacher`) joining
            the cohort as a fixed member.
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module] | Sequence[nn.Module],
        temperature: float = 1.0,
        update: Literal["joint", "sequential"] = "joint",
        teacher: nn.Module | Teacher | None = None,
        *,
        task: str | Task = "classification",
    ) -> None:
        super().__init__(task)
        if not isinstance(models, Mapping):
            models = {f"model{i}": m for i, m in enumerate(models)}
        for name in models:
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(
                    f"cohort member names must be non-empty, without '.'; got {name!r}"
                )
        modules = [*models.values(), *([teacher] if teacher is not None else [])]
        if len(models) < 1 or len(modules) < 2:
            raise ValueError(
                "a DML cohort needs at least 2 members (a teacher counts as one) and at least "
                f"one learner; got {len(models)} learner(s) and "
                f"{'a' if teacher is not None else 'no'} teacher"
            )
        teacher_module = teacher.module if isinstance(teacher, Teacher) else teacher
        check_distinct_modules([*models.values(), *filter(None, [teacher_module])], "a DML cohort")
        if update not in UPDATES:
            raise ConfigError(f"update must be one of {', '.join(UPDATES)}; got {update!r}")
        self.temperature = check_temperature(temperature)
        self.members = nn.ModuleDict({n: m.requires_grad_(True) for n, m in models.items()})
        self.teacher = as_teacher(teacher, self.task) if teacher is not None else None
        self.update = update

    @property
    def names(self) -> list[str]:
        """The learners' names, in cohort order."""
        return list(self.members)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """One group per member: each gets its own optimizer state and schedule."""
        return {
            name: [p for p in member.parameters() if p.requires_grad]
            for name, member in self.members.items()
        }

    def _teacher_logits(self, batch: Batch) -> list[torch.Tensor]:
        return [] if self.teacher is None else [self.teacher(batch)]

    def _peer_logits(self, name: str, batch: Batch) -> torch.Tensor:
        """Member ``name``'s predictions as a constant target (no graph, no BN update)."""
        member = self.members[name]
        with torch.no_grad(), _buffers_kept(member):
            return self.task.logits(member, batch)

    def _terms(
        self, logits: list[torch.Tensor], batch: Batch, fixed: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        targets, mask = self.task.targets(batch), self.task.positions(batch)
        return mutual_terms(logits, targets, self.temperature, fixed=fixed, mask=mask)

    def forward(self, batch: Batch) -> Output:
        """The joint form: ``loss`` = Σ_k L_k; ``logits`` = one tensor per member."""
        logits = [self.task.logits(member, batch) for member in self.members.values()]
        ce, kl = self._terms(logits, batch, self._teacher_logits(batch))
        parts: dict[str, torch.Tensor] = {}
        for name, c, d in zip(self.names, ce, kl, strict=True):
            parts[f"ce/{name}"] = c
            parts[f"kl/{name}"] = d
        loss = torch.stack(list(parts.values())).sum()
        return Output(loss=loss, parts={k: v.detach() for k, v in parts.items()}, logits=logits)

    def step_losses(
        self, batch: Batch | torch.Tensor, targets: torch.Tensor | None = None
    ) -> Iterator[tuple[str, Output]] | None:
        """``None`` in joint mode; in sequential mode, a generator of ``(name, output)``, one
        per member in cohort order, each computed after the previous member's update."""
        if self.update == "joint":
            return None
        return self._sequential(as_batch(batch, targets))

    def _sequential(self, batch: Batch) -> Iterator[tuple[str, Output]]:
        names = self.names
        fixed = self._teacher_logits(batch)
        # Constant predictions of every member; refreshed for a member once it has stepped.
        # Members not yet updated in this step keep theirs, so a step costs about 3K forwards
        # instead of K².
        targets_of = {name: self._peer_logits(name, batch) for name in names[1:]}
        for k, name in enumerate(names):
            if k > 0:
                previous = names[k - 1]
                targets_of[previous] = self._peer_logits(previous, batch)
            own = self.task.logits(self.members[name], batch)
            peers = [targets_of[n] for n in names if n != name]
            ce, kl = self._terms([own], batch, [*peers, *fixed])
            loss = ce[0] + kl[0]
            parts = {f"ce/{name}": ce[0].detach(), f"kl/{name}": kl[0].detach()}
            yield name, Output(loss=loss, parts=parts, logits=own)


class DMLStage(StageSpec):
    """``{method: dml, cohort: [a, b, ...], temperature: 1.0, update: joint, teacher: null}``.

    Trains every cohort member together in one phase (``dml``); each member is evaluated,
    logged and checkpointed under its own name. ``teacher`` (optional) names a trained model
    that joins the cohort as a fixed member.
    """

    method: Literal["dml"] = "dml"
    cohort: list[str] = Field(min_length=2)
    temperature: Temperature = 1.0
    update: Literal["joint", "sequential"] = "joint"
    teacher: str | None = None

    # The student learns from scratch together with a larger peer; no teacher involved.
    demo = DemoEntry(
        student="student_dml",
        stage={"method": "dml", "cohort": ["dml_peer", "student_dml"], "temperature": 1.0},
        models={"dml_peer": "cnn-4"},
    )

    @field_validator("cohort")
    @classmethod
    def _distinct_members(cls, cohort: list[str]) -> list[str]:
        check_distinct(cohort, "a cohort")
        dotted = [name for name in cohort if "." in name]
        if dotted:
            raise ValueError(f"cohort model names cannot contain '.'; rename {dotted}")
        return cohort

    @model_validator(mode="after")
    def _sequential_without_accumulation(self) -> DMLStage:
        if self.update == "sequential":
            check_one_after_another(self.train.grad_accum_steps, "train.grad_accum_steps")
        return self

    def produces(self) -> list[str]:
        return list(self.cohort)

    def uses(self) -> list[str]:
        return [self.teacher] if self.teacher else []

    def references(self) -> list[tuple[str, str]]:
        refs = [(f"cohort.{i}", name) for i, name in enumerate(self.cohort)]
        return refs + ([("teacher", self.teacher)] if self.teacher else [])

    def check(self, ctx: StageContext) -> None:
        members = [*self.cohort, *([self.teacher] if self.teacher else [])]
        check_same_outputs(ctx, f"stage {self.stage_name()!r} (dml): cohort", members)

    def phases(self, ctx: StageContext) -> list[Phase]:
        def build() -> DML:
            return DML(
                {name: ctx.models[name] for name in self.cohort},
                temperature=self.temperature,
                update=self.update,
                teacher=ctx.teacher(self.teacher) if self.teacher else None,
                task=ctx.task,
            )

        return [Phase("dml", build, list(self.cohort), self.train)]

    @classmethod
    def report_section(cls, summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
        has_test = "test" in summary["data"]
        alone = baselines(summary)
        split = ["val", "test"] if has_test else ["val"]
        header = ["model", "arch", "role"]
        header += [f"in the cohort ({s})" for s in split] + [f"alone ({s})" for s in split]
        lines = ["", "## Deep mutual learning (DML)"]
        for stage in stages:
            members = [(name, "learner") for name in stage.get("cohort", [])]
            if stage.get("teacher"):
                members.append((stage["teacher"], "fixed teacher"))
            temperature, update = stage.get("temperature", 1), stage.get("update", "joint")
            lines += [
                "",
                f"Stage `{stage['name']}`: {len(members)} members, T = {temperature:g}, "
                f"{update} updates",
                "",
            ]
            rows = []
            for name, role in members:
                arch = summary["models"].get(name, {}).get("arch", "")
                row = [name, arch, role, *metric_cells(summary, name, has_test, stage)]
                rows.append(row + alone_cells(summary, name, alone, has_test))
            lines += markdown_table(header, rows)
        return [*lines, "", ALONE_NOTE]
