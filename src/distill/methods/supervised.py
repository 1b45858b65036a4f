"""Training one model alone on the labels (the ``train`` stage): the baseline of every method."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import Distiller, Output, Phase, StageContext, StageSpec, logits_of


class Supervised(Distiller):
    """Cross-entropy on the labels: ``loss = CE(model(x), y)``, part ``ce``.

    ``label_smoothing`` is PyTorch's (0 disables it).
    """

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.student = model.requires_grad_(True)
        self.label_smoothing = label_smoothing

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> Output:
        logits = logits_of(self.student(inputs))
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return Output(loss=ce, parts={"ce": ce.detach()}, logits=logits)


class TrainStage(StageSpec):
    """``{method: train, model: NAME}``: train one model alone."""

    method: Literal["train"] = "train"
    model: str
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    def produces(self) -> list[str]:
        return [self.model]

    def phases(self, ctx: StageContext) -> list[Phase]:
        model = ctx.models[self.model]
        return [
            Phase(
                name="train",
                build=lambda: Supervised(model, self.label_smoothing),
                trains=[self.model],
                train=self.train,
            )
        ]
