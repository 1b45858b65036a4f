"""What a task is: how a model is called on a batch, its own loss, and its metrics.

Methods are written against a :class:`Task`, so one method (KD, say) distils image classifiers
and language models alike. The training loop and the evaluation only ever use the task's
functions; nothing outside :mod:`distill.tasks` branches on which task it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

Batch = Mapping[str, Any]
"""A batch: a dict of tensors (see DESIGN.md "Batches")."""


@dataclass(frozen=True)
class Metric:
    """How one metric of a task is named and shown.

    Attributes:
        name: the key in metrics (``accuracy``); runs write ``val_<name>`` and ``test_<name>``.
        label: a short column title (``acc``).
        percent: show as a percentage (a fraction in [0, 1]).
        higher_is_better: whether a larger value is better.
    """

    name: str
    label: str
    percent: bool = False
    higher_is_better: bool = True

    def format(self, value: float | None) -> str:
        """``97.50%`` or ``12.34``; an em dash when there is no value."""
        if value is None:
            return "—"
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4g}"


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output.

    A tensor is returned as is; an object with a ``logits`` attribute or key (Hugging Face
    outputs) gives that; a tuple or list gives its first element.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; return a "
        "tensor, a tuple whose first item is the logits, or an object with a .logits field"
    )


class Task:
    """Base class of the tasks (see :mod:`distill.tasks.classification` and
    :mod:`distill.tasks.causal_lm`).

    Attributes:
        name: the recipe's ``task:`` value.
        metrics_info: the metrics :meth:`reduce` returns, the first being the one that says
            which model is best (the primary metric).
        summary_metrics: the metrics recorded per model in ``summary.json`` and its tables.
        unit: what :meth:`count` counts, for throughput in progress bars (``samples``).
        data_kind: the kind of data it runs on (``images``, ``text``), which a dataset's
            ``kind`` must be.
    """

    name: ClassVar[str]
    metrics_info: ClassVar[tuple[Metric, ...]]
    summary_metrics: ClassVar[tuple[str, ...]]
    unit: ClassVar[str] = "samples"
    data_kind: ClassVar[str] = "images"

    @property
    def primary(self) -> Metric:
        return self.metrics_info[0]

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics_info if m.name == name)

    def inputs(self, batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` with which a model is called on ``batch``."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Batch) -> Any:
        """The model's raw output on ``batch``."""
        args, kwargs = self.inputs(batch)
        return model(*args, **kwargs)

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The logits where losses apply, classes last (see the subclasses for shapes)."""
        raise NotImplementedError

    def targets(self, batch: Batch) -> torch.Tensor:
        """Class indices aligned with :meth:`logits` (the logits' shape without classes)."""
        raise NotImplementedError

    def positions(self, batch: Batch) -> torch.Tensor | None:
        """Boolean mask over the logits' positions where losses apply (``None``: all)."""
        raise NotImplementedError

    def count(self, batch: Batch) -> torch.Tensor:
        """How many positions of ``batch`` losses apply to (an int64 scalar tensor): the
        weight of the batch in a mean over an optimizer step."""
        mask = self.positions(batch)
        if mask is None:
            targets = self.targets(batch)
            return torch.tensor(targets.numel(), device=targets.device)
        return mask.sum()

    def check_batch(self, batch: Batch) -> None:
        """ValueError for a batch no loss can be taken over: one of no sample (its means would
        be NaN)."""
        args, kwargs = self.inputs(batch)
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
        if tensors and tensors[0].dim() and tensors[0].shape[0] == 0:
            raise ValueError(
                f"the batch is empty (inputs of shape {tuple(tensors[0].shape)}): a loss or a "
                "metric needs at least one sample"
            )

    def batch_size(self, batch: Batch) -> int:
        """Number of samples in ``batch``."""
        return int(self.targets(batch).shape[0])

    def supervised_loss(
        self, logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        """The task's own loss on the labels: cross-entropy (with PyTorch's
        ``label_smoothing``), a float32 mean over the positions where losses apply."""
        raise NotImplementedError

    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        """Additive statistics per sample (float64 ``[N]`` each), summed over a whole split and
        then turned into metrics by :meth:`reduce`."""
        raise NotImplementedError

    def reduce(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Metrics of a whole split from the sums of :meth:`metrics`."""
        raise NotImplementedError

    def check_model(self, model: nn.Module, data: Any) -> None:
        """Raise :class:`~distill.errors.ConfigError` when ``model`` cannot run on ``data``
        (nothing is checked by default)."""

    def samples(self, models: Mapping[str, nn.Module], data: Any) -> dict[str, Any] | None:
        """What each model makes of one fixed input, for the report (``None``: nothing to
        show)."""
        return None

    def model_options(self, data: Any) -> dict[str, Any]:
        """Options a run offers every model's source (each takes those it names): the task,
        and what the data says (e.g. ``num_classes``)."""
        return {"task": self.name}
