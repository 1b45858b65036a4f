"""Evaluation of one model on a whole split, with the metrics of its task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from ..data.batches import BatchItems
from ..errors import DistillError
from ..precision import autocast
from ..tasks import Task, get_task
from .distributed import get_accelerator, sum_over_processes


def eval_loader(
    data: Dataset, batch_size: int, collate: Callable[[list[Any]], Any] | None = None
) -> DataLoader:
    """A loader of dict batches over ``data`` in order (see :class:`BatchItems`)."""
    return DataLoader(
        BatchItems(data), batch_size=batch_size, collate_fn=collate or default_collate
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    task: str | Task = "classification",
    *,
    batch_size: int = 256,
    accelerator: Accelerator | None = None,
    precision: str = "fp32",
    collate: Callable[[list[Any]], Any] | None = None,
) -> dict[str, float]:
    """The task's metrics of ``model`` on the whole of ``data``: for classification
    ``{"accuracy", "loss"}`` (a fraction in [0, 1] and the mean cross-entropy), for a causal
    LM ``{"perplexity", "loss", "token_accuracy"}`` over every labelled token.

    ``data`` is a dataset (batched here, items turned into dict batches, ``collate`` stacking
    or padding them) or a loader of dict batches. Over several processes the per-sample
    statistics are gathered, so the numbers are those of the whole dataset, not of one
    shard. The model's train/eval mode is restored afterwards.
    """
    task = get_task(task)
    accelerator = accelerator or get_accelerator()
    if not isinstance(data, DataLoader):
        data = eval_loader(data, batch_size, collate)
    loader = accelerator.prepare_data_loader(data, device_placement=True)
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    try:
        for batch in loader:
            task.check_batch(batch)
            with autocast(accelerator.device, precision):
                logits = task.logits(model, batch)
            stats = accelerator.gather_for_metrics(task.metrics(logits, batch))
            for key, value in stats.items():
                sums[key] = sums.get(key, 0) + value.double().sum()
    finally:
        model.train(was_training)
    if not sums or float(sums["count"]) == 0:
        raise DistillError("cannot evaluate on an empty dataset")
    return task.reduce({key: float(value) for key, value in sums.items()})


class RunningMeans:
    """Means of the loss parts over an epoch's training steps, each micro-batch weighted by
    its position count (samples, or labelled tokens), on every process."""

    def __init__(self, sums: dict[str, float] | None = None, seen: float = 0.0) -> None:
        self.sums = dict(sums or {})
        self.seen = seen

    def add(self, count: float, outputs: list[Any]) -> None:
        """Add the outputs (:class:`~distill.methods.Output`) of a micro-batch of ``count``
        positions."""
        self.seen += count
        for out in outputs:
            for key, value in {"loss": out.loss.detach(), **out.parts}.items():
                self.sums[key] = self.sums.get(key, 0.0) + float(value) * count

    def shown(self) -> dict[str, str]:
        """This process's means so far, formatted for a progress bar."""
        return {k: f"{v / max(self.seen, 1):.4f}" for k, v in self.sums.items()}

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """The means over every process (a collective call: every process must make it)."""
        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] for k in keys] + [self.seen], dtype=torch.float64)
        values = sum_over_processes(values.to(accelerator.device), accelerator)
        total = max(float(values[-1]), 1.0)
        return {k: float(v) / total for k, v in zip(keys, values[:-1].tolist(), strict=True)}


def epoch_line(desc: str, record: dict[str, Any], task: Task, epochs: int) -> str:
    """One line for an epoch's record: training loss parts, each model's primary validation
    metric and the seconds."""
    metric = task.primary
    train = " ".join(f"{k} {v:.4f}" for k, v in record["train"].items())
    val = " ".join(
        f"val_{metric.name}[{name}] {metric.format(v[metric.name])}"
        for name, v in record["val"].items()
    )
    return f"{desc} {record['epoch']}/{epochs}: {train} {val} ({record['seconds']:.1f} s)"
