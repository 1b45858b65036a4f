"""What the logit-based methods added with DKD and DIST share: the shape check of the two
networks' logits, and the logit-standardisation option (Sun et al., CVPR 2024)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses.standardize import standardize
from .base import StageSpec


def check_logits(logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    """Student and teacher must predict the same classes."""
    if logits.shape != teacher_logits.shape:
        raise ValueError(
            "teacher and student outputs differ in shape: teacher "
            f"{tuple(teacher_logits.shape)}, student {tuple(logits.shape)}; both must predict "
            "the same classes"
        )


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
