"""Training one model alone on the labels (the ``train`` stage): the baseline of every method."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..tasks import Batch, Task
from .base import Distiller, Output, Phase, StageContext, StageSpec


class Supervised(Distiller):
    """The task's own loss on the labels: ``loss = CE(model(x), y)``, part ``ce`` (a token
    mean for a causal LM). ``label_smoothing`` is PyTorch's (0 disables it)."""

    def __init__(
        self, model: nn.Module, label_smoothing: float = 0.0, *, task: str | Task = "classification"
    ) -> None:
        super().__init__(task)
        self.student = model.requires_grad_(True)
        self.label_smoothing = label_smoothing

    def forward(self, batch: Batch) -> Output:
        logits = self.task.logits(self.student, batch)
        ce = self.task.supervised_loss(logits, batch, self.label_smoothing)
        return Output(loss=ce, parts={"ce": ce.detach()}, logits=logits)


class TrainStage(StageSpec):
    """``{method: train, model: NAME}``: train one model alone."""

    method: Literal["train"] = "train"
    model: str
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    def produces(self) -> list[str]:
        return [self.model]

    def references(self) -> list[tuple[str, str]]:
        return [("model", self.model)]

    def phases(self, ctx: StageContext) -> list[Phase]:
        model = ctx.models[self.model]
        return [
            Phase(
                name="train",
                build=lambda: Supervised(model, self.label_smoothing, task=ctx.task),
                models=[self.model],
                config=self.train,
            )
        ]
