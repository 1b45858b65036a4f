"""Stores of teacher outputs, so a teacher does not run on every step.

Two kinds, both behind the teacher's store protocol (``lookup(batch, compute)`` and
``flush()``, see :class:`~distill.teachers.OutputStore`), so methods never see them:

- :mod:`distill.cache.online` — :class:`TeacherCache`, filled during training on first sight
  of each sample view (``cache: teacher`` in a recipe), in memory or memory-mapped under the
  run directory;
- :mod:`distill.cache.offline` — :class:`TeacherStore`, a memory-mapped store of the
  teacher's top-k log-probabilities per token, built once before training by
  ``distill cache build`` (:mod:`distill.cache.build`) and read by a stage's
  ``teacher_logits: PATH``; the teacher then never runs.

Every public name of :mod:`distill.cache.online` is importable from here.
"""

from __future__ import annotations

from .online import (
    CACHE_FORMAT,
    CacheSettings,
    TeacherCache,
    ViewDataset,
    cache_keys,
    check_cache_settings,
    dataset_fingerprint,
    estimate_bytes,
    model_fingerprint,
    tensor_digest,
    transform_description,
)

__all__ = [
    "CACHE_FORMAT",
    "CacheSettings",
    "TeacherCache",
    "ViewDataset",
    "cache_keys",
    "check_cache_settings",
    "dataset_fingerprint",
    "estimate_bytes",
    "model_fingerprint",
    "tensor_digest",
    "transform_description",
]
