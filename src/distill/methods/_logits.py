"""What the logit-based methods (KD, DKD, DIST) share: matching the two networks' classes,
and the logit-standardisation option (Sun et al., CVPR 2024)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses.standardize import standardize
from .base import StageSpec

#: How a teacher's and a student's classes relate (see :func:`match_classes`).
VOCABS = ("equal", "shared")


def match_classes(
    student: torch.Tensor, teacher: torch.Tensor, vocab: str = "equal"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and teacher's logits over the same classes: as they are (``equal``), or
    cut to the first ``min(V_s, V_t)`` (``shared``).

    Raises:
        ValueError: the shapes differ (beyond the last dimension with ``shared``); the message
            names both.
    """
    if vocab == "shared" and student.shape[:-1] == teacher.shape[:-1]:
        shared = min(student.shape[-1], teacher.shape[-1])
        return student[..., :shared], teacher[..., :shared]
    if student.shape != teacher.shape:
        hint = ""
        if student.shape[:-1] == teacher.shape[:-1]:
            hint = (
                f"; the teacher predicts {teacher.shape[-1]} classes and the student "
                f"{student.shape[-1]}: if they are one tokenizer family's vocabularies padded "
                "differently, set vocab: shared"
            )
        raise ValueError(
            "teacher and student outputs differ in shape: teacher "
            f"{tuple(teacher.shape)}, student {tuple(student.shape)}; both must predict the "
            f"same classes{hint}"
        )
    return student, teacher


def distillation_logits(
    logits: torch.Tensor, teacher_logits: torch.Tensor, standardized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits the distillation terms see: both networks' Z-scores per sample
    (:func:`~distill.losses.standardize.standardize`) when ``standardized``, else the logits
    themselves. Cross-entropy always takes the student's own logits."""
    if not standardized:
        return logits, teacher_logits
    return standardize(logits), standardize(teacher_logits)


def check_standardize(stage: StageSpec) -> None:
    """``standardize: true`` Z-scores the teacher's logits, but a top-k cache keeps only
    ``T · log p`` of the k largest, whose Z-score differs: refuse the pair."""
    topk = getattr(stage, "cache_topk", None)
    if getattr(stage, "standardize", False) and topk:
        raise ConfigError(
            f"stage {stage.stage_name()!r} ({stage.method}): standardize: true needs the "
            f"teacher's own logits, but cache_topk: {topk} keeps only the top classes' "
            "log-probabilities; drop cache_topk (a dense cache is exact) or standardize"
        )
