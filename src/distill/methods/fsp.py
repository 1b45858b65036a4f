"""FSP: the flow of solution procedure (Yim, Joo, Bae and Kim, CVPR 2017), as the paper's two
stages, run here as two phases.

Phase 1: the student learns to reproduce the teacher's FSP matrices, the ``C1 × C2`` Gram-like
matrices between pairs of layers (:func:`~distill.losses.fsp_matrix`). Phase 2: the whole
student trains on the task, with cross-entropy (the paper) or KD (``finetune="kd"``). Python
API::

    pairs = propose_fsp_pairs(teacher, student)        # zoo models; or name them yourself:
    pairs = [FSPPair(student=("stem", "stages.0"), teacher=("stem", "stages.0"))]
    fsp = FSP(teacher, student, x[:8], pairs=pairs)
    fit(fsp)                      # phase 1: loss = fsp_loss
    fit(fsp.second_phase())       # phase 2: Supervised(student), or KD with finetune="kd"

FSP compares matrices entry by entry, so a student layer must have as many channels as the
teacher layer it is paired with. ``student_adapters=True`` (not in the paper) puts a 1×1 conv
+ BatchNorm on each student feature whose channels differ, so any pair works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from ..adapters import build_adapter
from ..checks import check_fraction, check_temperature
from ..config import Strict, merged_train
from ..errors import ConfigError
from ..losses import fsp_loss, fsp_matrix
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._features import FeaturePhase, FeaturePhaseSpec, check_layer, check_overrides, zoo_sections
from .base import DemoEntry, Distiller, Output, Phase, StageContext, as_batch
from .kd import KD
from .supervised import Supervised


class FSPPair(Strict):
    """One FSP matrix to match: two student layers, two teacher layers, a weight.

    ``FSPPair(student=("stem", "stages.0"), teacher=("stem", "stages.0"), weight=1.0)``; in a
    recipe ``{student: [stem, stages.0], teacher: [stem, stages.0]}``. The first layer of each
    pair gives the rows of the matrix, the second its columns.
    """

    student: tuple[str, str]
    teacher: tuple[str, str]
    weight: float = Field(1.0, ge=0)


def fsp_sections(model: nn.Module) -> list[tuple[str, str]]:
    """The paper's layer pairs for a zoo model: the first and last layer of each section.

    A section's first layer is where its input comes from (``stem`` for ``stages.0``, else
    the previous section, max-pooled to the section's size by :func:`fsp_matrix`), its last
    layer its output: ``[("stem", "stages.0"), ("stages.0", "stages.1"), ...]``.
    """
    sections = zoo_sections(model, "pairs")
    return list(zip(["stem", *sections[:-1]], sections, strict=True))


def propose_fsp_pairs(teacher: nn.Module, student: nn.Module) -> list[FSPPair]:
    """The paper's pairs for two zoo models: section ``i`` of the student with section ``i``
    of the teacher, for as many sections as the shallower model has (weight 1 each)."""
    return [
        FSPPair(student=s, teacher=t)
        for s, t in zip(fsp_sections(student), fsp_sections(teacher), strict=False)
    ]


class FSP(FeaturePhase):
    r"""Phase 1 of FSP: the student matches the teacher's FSP matrices.

    .. math::
        \mathcal{L}_\text{fsp} = \sum_i \lambda_i \, \frac1N \sum_x
            \big\| G_i^s(x) - G_i^t(x) \big\|_F^2

    Part ``fsp``. Both forwards stop after their last paired layer; only the student
    parameters feeding the paired layers (and the adapters) train until :meth:`release` or
    :meth:`second_phase`. ``Output.logits`` is an empty ``[N, 0]`` tensor.

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any module; frozen, eval mode, run
            under ``torch.no_grad()``.
        student: the module to train.
        sample_batch: a batch (a dict, or an input tensor for image classification); one
            probe forward checks the pairs and sizes the adapters.
        pairs: :class:`FSPPair` objects (or dicts of their fields). Default (zoo models):
            :func:`propose_fsp_pairs`.
        student_adapters: add a 1×1 conv + BatchNorm on each student feature whose channel
            count differs from its teacher counterpart's (otherwise such a pair is an error).
        finetune: phase 2 on ``"ce"`` (the paper) or ``"kd"``.
        temperature: phase 2's KD temperature when ``finetune="kd"`` (4).
        alpha: phase 2's KD weight when ``finetune="kd"`` (0.9).
        task: how the models are called on a batch (default ``classification``).

    Raises:
        ConfigError: a layer name is unknown, a map is not ``[N, C, H, W]``, or channel
            counts differ without ``student_adapters``.
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        sample_batch: Batch | torch.Tensor,
        *,
        pairs: Sequence[FSPPair | Mapping[str, Any]] | None = None,
        student_adapters: bool = False,
        finetune: Literal["ce", "kd"] = "ce",
        temperature: float = 4.0,
        alpha: float = 0.9,
        task: str | Task = "classification",
    ) -> None:
        if finetune not in ("ce", "kd"):
            raise ValueError(f"finetune must be 'ce' or 'kd', got {finetune!r}")
        temperature, alpha = check_temperature(temperature), check_fraction(alpha)
        module = teacher.module if isinstance(teacher, Teacher) else teacher
        if pairs is None:
            pairs = propose_fsp_pairs(module, student)
        checked = [p if isinstance(p, FSPPair) else FSPPair.model_validate(p) for p in pairs]
        if not checked:
            raise ConfigError("FSP needs at least one layer pair")
        for index, pair in enumerate(checked):
            for side in (0, 1):
                check_layer(student, pair.student[side], f"pairs.{index}.student.{side}")
                check_layer(module, pair.teacher[side], f"pairs.{index}.teacher.{side}")
        super().__init__(
            teacher,
            student,
            sample_batch,
            [name for p in checked for name in p.student],
            [name for p in checked for name in p.teacher],
            task=task,
        )
        self.pairs = checked
        self.finetune = finetune
        self.temperature = temperature
        self.alpha = alpha
        for model, features in (("student", self.student_probe), ("teacher", self.teacher_probe)):
            for name, feature in features.items():
                if feature.dim() != 4:
                    raise ConfigError(
                        f"{model} layer {name!r} gives shape {list(feature.shape)}; FSP "
                        "matrices need [N, C, H, W] feature maps"
                    )
        # Keyed "<pair>_<0|1>": module names cannot hold the dots of layer names.
        self.adapters = nn.ModuleDict()
        for index, pair in enumerate(checked):
            for side in (0, 1):
                source = self.student_probe[pair.student[side]]
                target = self.teacher_probe[pair.teacher[side]]
                if source.shape[1] == target.shape[1]:
                    continue
                if not student_adapters:
                    raise ConfigError(self._channel_message(index, pair))
                # Same spatial size as the student's map: the adapter only maps channels.
                shape = (source.shape[0], target.shape[1], *source.shape[2:])
                self.adapters[f"{index}_{side}"] = build_adapter(source.shape, shape).to(
                    source.device
                )

    def _channel_message(self, index: int, pair: FSPPair) -> str:
        s = [self.student_probe[n].shape[1] for n in pair.student]
        t = [self.teacher_probe[n].shape[1] for n in pair.teacher]
        return (
            f"pairs.{index}: the student's FSP matrix ({pair.student[0]} × {pair.student[1]}) "
            f"is {s[0]}×{s[1]} but the teacher's ({pair.teacher[0]} × {pair.teacher[1]}) is "
            f"{t[0]}×{t[1]}; FSP compares the matrices entry by entry, so paired layers need "
            "the same channel counts. Pair layers with equal channels (`distill layers ARCH` "
            "shows them) or set student_adapters: true to map the student's channels with "
            "1×1 convs (not in the paper)"
        )

    def _student_map(
        self, features: dict[str, torch.Tensor], index: int, side: int
    ) -> torch.Tensor:
        feature = features[self.pairs[index].student[side]]
        key = f"{index}_{side}"
        return self.adapters[key](feature) if key in self.adapters else feature

    def matrices(
        self, batch: Batch | torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(student matrices, teacher matrices)``, one ``[N, C1, C2]`` per pair, of a batch
        (or of image inputs)."""
        student, teacher = self.features(as_batch(batch))
        student_mats = [
            fsp_matrix(self._student_map(student, i, 0), self._student_map(student, i, 1))
            for i in range(len(self.pairs))
        ]
        teacher_mats = [
            fsp_matrix(teacher[p.teacher[0]], teacher[p.teacher[1]]) for p in self.pairs
        ]
        return student_mats, teacher_mats

    def forward(self, batch: Batch) -> Output:
        student_mats, teacher_mats = self.matrices(batch)
        loss = fsp_loss(student_mats, teacher_mats, [p.weight for p in self.pairs])
        return Output(loss=loss, parts={"fsp": loss.detach()}, logits=self.no_logits(batch))

    def second_phase(self) -> Distiller:
        """Phase 2 on the whole student from its phase-1 weights (no adapters): cross-entropy,
        or KD when ``finetune="kd"``."""
        self.release()
        return second_phase(
            self.teacher, self.student, self.finetune, self.temperature, self.alpha, self.task
        )


def second_phase(
    teacher: nn.Module | Teacher,
    student: nn.Module,
    finetune: str,
    temperature: float,
    alpha: float,
    task: str | Task = "classification",
    **kd_options: Any,
) -> Distiller:
    """FSP's phase-2 Distiller: ``Supervised(student)`` for ``"ce"``, ``KD`` (with
    ``kd_options``, see :class:`KD`) for ``"kd"``."""
    if finetune == "kd":
        return KD(teacher, student, temperature, alpha, task=task, **kd_options)
    return Supervised(student, task=task)


class FSPStage(FeaturePhaseSpec):
    """``{method: fsp, teacher, student, pairs: [...], fsp: {...}, finetune: ce}``.

    Two phases: ``fsp`` (phase 1, the stage's settings with ``fsp`` merged over them), then
    ``ce`` or ``kd`` (phase 2, the stage's own settings).
    """

    method: Literal["fsp"] = "fsp"
    pairs: list[FSPPair] | None = Field(None, min_length=1)
    student_adapters: bool = False
    finetune: Literal["ce", "kd"] = "ce"
    fsp: dict[str, Any] = Field(default_factory=dict)

    _fsp_fits = field_validator("fsp")(check_overrides)

    @model_validator(mode="after")
    def _standardize_needs_kd(self) -> FSPStage:
        if self.standardize and self.finetune == "ce":
            raise ValueError(
                "standardize: true applies to a KD phase, but finetune: ce trains phase 2 on "
                "cross-entropy alone; set finetune: kd or drop standardize"
            )
        return self

    # As in the paper: 3 epochs on the FSP matrices of the first two sections (16×16 and 16×32
    # channels in both demo models), at a small learning rate (the loss sums C1·C2 squared
    # entries), then cross-entropy for the usual epochs.
    demo = DemoEntry(
        student="student_fsp",
        stage={
            "method": "fsp",
            "teacher": "teacher",
            "student": "student_fsp",
            "pairs": [
                {"student": ["stem", "stages.0"], "teacher": ["stem", "stages.0"]},
                {"student": ["stages.0", "stages.1"], "teacher": ["stages.0", "stages.1"]},
            ],
            "fsp": {"epochs": 3, "optimizer": {"lr": 2.0e-4}},
            "finetune": "ce",
        },
    )

    def build_phase_one(self, ctx: StageContext) -> FSP:
        return FSP(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            ctx.sample_batch,
            pairs=self.pairs,
            student_adapters=self.student_adapters,
            finetune=self.finetune,
            temperature=self.temperature,
            alpha=self.alpha,
            task=ctx.task,
        )

    def phases(self, ctx: StageContext) -> list[Phase]:
        def build_finetune() -> Distiller:
            return second_phase(
                ctx.teacher(self.teacher),
                ctx.models[self.student],
                self.finetune,
                self.temperature,
                self.alpha,
                ctx.task,
                **self.soft_loss_options(),
            )

        return [
            Phase(
                name="fsp",
                build=lambda: self.phase_one(ctx),
                models=[self.student],
                config=merged_train(self.train, self.fsp),
                after=FSP.release,
            ),
            Phase(self.finetune, build_finetune, [self.student], self.train),
        ]
