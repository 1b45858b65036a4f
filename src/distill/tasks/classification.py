"""Classification: one label per sample.

Batch: ``{"inputs": [N, ...], "targets": [N], "index": [N]}``; the model is called as
``model(inputs)`` and its logits are ``[N, C]``. Loss: cross-entropy, a mean over the batch.
Metrics over a split: ``accuracy`` (top-1, a fraction) and ``loss`` (mean cross-entropy).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Batch, Metric, Task, logits_of


class Classification(Task):
    """Logits ``[N, C]``, targets ``[N]``; every sample counts once."""

    name = "classification"
    metrics_info = (
        Metric("accuracy", "acc", percent=True),
        Metric("loss", "loss", higher_is_better=False),
    )
    summary_metrics = ("accuracy",)

    def inputs(self, batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (batch["inputs"],), {}

    def check_batch(self, batch: Batch) -> None:
        """Also: images (``[N, C, H, W]``, or ``[N, H, W]``) must be floating point."""
        super().check_batch(batch)
        x = batch["inputs"]
        if isinstance(x, torch.Tensor) and x.dim() >= 3 and not x.is_floating_point():
            raise ValueError(
                f"batch['inputs'] holds {x.dtype} images, but models take floating-point "
                "inputs (torch.float32; bf16/fp16 come from autocast): convert them, e.g. "
                "x.float() / 255, normalised as for training"
            )

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return logits_of(self.forward(model, batch))

    def targets(self, batch: Batch) -> torch.Tensor:
        return batch["targets"]

    def positions(self, batch: Batch) -> torch.Tensor | None:
        return None

    def supervised_loss(
        self, logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["targets"], label_smoothing=label_smoothing)

    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        logits = logits.float()
        targets = batch["targets"]
        return {
            "loss": F.cross_entropy(logits, targets, reduction="none").double(),
            "correct": (logits.argmax(dim=-1) == targets).double(),
            "count": torch.ones_like(targets, dtype=torch.float64),
        }

    def reduce(self, sums: Mapping[str, float]) -> dict[str, float]:
        count = sums["count"]
        return {"accuracy": sums["correct"] / count, "loss": sums["loss"] / count}

    def model_options(self, data: Any) -> dict[str, Any]:
        return {"task": self.name, "num_classes": data.num_classes, "in_channels": data.in_channels}
