"""Causal language modelling: every token predicts the next one.

Batch: ``{"input_ids": [N, L], "attention_mask": [N, L], "labels": [N, L], "index": [N]}``,
``labels`` being the input ids with −100 where no loss applies (padding, or the prompt when
training on completions only). The model is called as ``model(input_ids=...,
attention_mask=...)``. The causal shift is done here, once: logits ``[N, L−1, V]`` at
positions ``0..L−2`` predict ``labels[:, 1:]``; positions whose target is −100 are left out of
every loss and metric.

Losses and metrics are means over *tokens*, not over sequences or batches: a step's mean is
taken over every labelled token of the step (the training loop weights each micro-batch by its
token count, across gradient-accumulation micro-batches and processes), and a split's metrics
over every labelled token of the split: ``loss`` (nats per token), ``perplexity`` =
exp(``loss``) and ``token_accuracy`` (greedy next-token accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Batch, Metric, Task, logits_of

IGNORE_INDEX = -100
"""The label of positions where no loss applies (PyTorch's and Hugging Face's convention)."""


class CausalLM(Task):
    """Logits ``[N, L−1, V]`` after the shift, targets ``labels[:, 1:]``."""

    name = "causal_lm"
    metrics_info = (
        Metric("loss", "loss", higher_is_better=False),
        Metric("perplexity", "ppl", higher_is_better=False),
        Metric("token_accuracy", "tok acc", percent=True),
    )
    summary_metrics = ("loss", "perplexity", "token_accuracy")
    unit = "tokens"
    data_kind = "text"

    def inputs(self, batch: Batch) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs = {"input_ids": batch["input_ids"]}
        if "attention_mask" in batch:
            kwargs["attention_mask"] = batch["attention_mask"]
        return (), kwargs

    def logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return logits_of(self.forward(model, batch))[:, :-1, :]

    def targets(self, batch: Batch) -> torch.Tensor:
        return batch["labels"][:, 1:]

    def positions(self, batch: Batch) -> torch.Tensor:
        return self.targets(batch) != IGNORE_INDEX

    def supervised_loss(
        self, logits: torch.Tensor, batch: Batch, label_smoothing: float = 0.0
    ) -> torch.Tensor:
        targets = self.targets(batch)
        total = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            label_smoothing=label_smoothing,
        )
        return total / (targets != IGNORE_INDEX).sum().clamp_min(1)

    def metrics(self, logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        targets = self.targets(batch)
        mask = targets != IGNORE_INDEX
        nll = F.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        hits = (logits.argmax(dim=-1) == targets) & mask
        return {
            "loss": nll.double().sum(dim=-1),
            "correct": hits.double().sum(dim=-1),
            "count": mask.double().sum(dim=-1),
        }

    def model_options(self, data: Any) -> dict[str, Any]:
        return {"task": self.name, "vocab_size": data.vocab_size}

    def check_model(self, model: nn.Module, data: Any) -> None:
        vocab = vocab_size(model)
        if vocab is not None and vocab < data.vocab_size:
            raise ConfigError(
                f"the model's vocabulary has {vocab} ids but the tokenizer makes "
                f"{data.vocab_size}; give the model a vocab_size of at least {data.vocab_size}"
            )

    def samples(
        self,
        models: Mapping[str, nn.Module],
        data: Any,
        prompt_tokens: int = 32,
        new_tokens: int = 48,
        prompts: int = 3,
    ) -> dict[str, Any] | None:
        """The greedy continuation, by each model, of fixed prompts: the first
        ``prompt_tokens`` labelled tokens of each of the first ``prompts`` validation
        sequences (those with at least 2), ``{"prompts": [text, ...], "continuations": {name:
        [text, ...]}}`` (greedy decoding needs no seed, so they are the same on every run)."""
        tokenizer = getattr(data, "tokenizer", None)
        if tokenizer is None or len(data.val) == 0:
            return None
        chosen = []
        for index in range(min(prompts, len(data.val))):
            item = data.val[index]
            keep = item["labels"] != IGNORE_INDEX if "labels" in item else None
            ids = item["input_ids"] if keep is None else item["input_ids"][keep]
            if len(ids[:prompt_tokens]) >= 2:
                chosen.append(ids[:prompt_tokens])
        if not chosen:
            return None
        return {
            "prompts": [tokenizer.decode(prompt.tolist()) for prompt in chosen],
            "continuations": {
                name: [
                    tokenizer.decode(greedy(self, model, prompt, new_tokens).tolist())
                    for prompt in chosen
                ]
                for name, model in models.items()
            },
        }

    def reduce(self, sums: Mapping[str, float]) -> dict[str, float]:
        count = sums["count"]
        loss = sums["loss"] / count
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700.0)),
            "token_accuracy": sums["correct"] / count,
        }


def vocab_size(model: nn.Module) -> int | None:
    """The number of token ids a (Hugging Face) causal LM predicts, when it says."""
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) else None


@torch.no_grad()
def greedy(task: Task, model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The ``new_tokens`` ids a model predicts after ``prompt`` ``[L]``, one at a time, each
    the most likely (a full forward per token: for the short samples of a report). The model's
    train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = prompt.to(device)[None]
    try:
        for _ in range(new_tokens):
            logits = logits_of(task.forward(model, {"input_ids": ids}))
            ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    finally:
        model.train(was_training)
    return ids[0, prompt.shape[0] :].cpu()
