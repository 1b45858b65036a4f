"""Tasks: how a model is called on a batch, its own loss and its metrics.

``TASKS`` is the registry of the recipe's ``task:`` values. Methods, the training loop and the
evaluation are written against :class:`Task`, so the same KD distils image classifiers
(``classification``) and language models (``causal_lm``).
"""

from __future__ import annotations

from .base import Batch, Metric, Task, logits_of
from .causal_lm import IGNORE_INDEX, CausalLM
from .classification import Classification

TASKS: dict[str, Task] = {
    "classification": Classification(),
    "causal_lm": CausalLM(),
}


def get_task(task: str | Task) -> Task:
    """The task named ``task`` (a :class:`Task` is returned as is)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        from ..errors import ConfigError, did_you_mean

        raise ConfigError(
            f"task: unknown task {task!r}{did_you_mean(str(task), TASKS)}; "
            f"allowed: {', '.join(TASKS)}"
        )
    return TASKS[task]


__all__ = [
    "IGNORE_INDEX",
    "TASKS",
    "Batch",
    "CausalLM",
    "Classification",
    "Metric",
    "Task",
    "get_task",
    "logits_of",
]
