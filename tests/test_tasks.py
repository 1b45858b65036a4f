"""Tasks: the causal shift, ignored positions, token means over a whole optimizer step, and the
metrics of a split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from distill import Supervised
from distill.config import TrainConfig
from distill.errors import ConfigError
from distill.tasks import IGNORE_INDEX, TASKS, get_task
from distill.training import Trainer, evaluate

VOCAB = 11


class NextToken(nn.Module):
    """A hand-written next-token model: embedding, then a linear map to the vocabulary;
    ``model(input_ids=..., attention_mask=...)`` -> logits ``[N, L, V]``."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, VOCAB)
        self.masks: list[torch.Tensor] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):  # noqa: ANN201
        if attention_mask is not None:
            self.masks.append(attention_mask)
        return self.out(self.embed(input_ids))


def lm_batch(lengths: list[int], length: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded sequences of the given lengths, labels -100 on padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), length), generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_causal_lm_shifts_once_and_leaves_out_ignored_positions() -> None:
    task = get_task("causal_lm")
    model = NextToken()
    batch = lm_batch([6, 3, 1])
    logits = task.logits(model, batch)
    assert logits.shape == (3, 5, VOCAB)
    assert torch.equal(model.masks[-1], batch["attention_mask"]), "the mask reaches the model"
    # Position t predicts token t + 1: logits of the first L - 1 positions, labels shifted.
    full = model(batch["input_ids"])
    assert torch.equal(logits, full[:, :-1])
    assert torch.equal(task.targets(batch), batch["labels"][:, 1:])
    mask = task.positions(batch)
    assert mask.tolist() == [[True] * 5, [True, True, False, False, False], [False] * 5]
    assert int(task.count(batch)) == 5 + 2 + 0
    # The token mean over labelled positions, written out.
    nll = [
        -F.log_softmax(full[n, t], dim=-1)[batch["input_ids"][n, t + 1]]
        for n, length in enumerate([6, 3, 1])
        for t in range(length - 1)
    ]
    want = torch.stack(nll).mean()
    assert torch.allclose(task.supervised_loss(logits, batch), want, atol=1e-6)


def test_perplexity_is_the_exponential_of_the_token_mean_loss() -> None:
    task = get_task("causal_lm")
    model = NextToken()
    data = [lm_batch([6, 4], seed=s) for s in range(3)]
    items = [{k: v[i] for k, v in b.items()} for b in data for i in range(2)]
    metrics = evaluate(model, ListData(items), "causal_lm", batch_size=4)
    assert set(metrics) == {"loss", "perplexity", "token_accuracy"}
    # Every labelled token counts once, whichever batch it falls in.
    nll, hits, tokens = 0.0, 0, 0
    for item in items:
        with torch.no_grad():
            logits = model(item["input_ids"][None])[0, :-1]
        targets = item["labels"][1:]
        keep = targets != IGNORE_INDEX
        nll += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
        hits += int((logits[keep].argmax(-1) == targets[keep]).sum())
        tokens += int(keep.sum())
    assert metrics["loss"] == pytest.approx(nll / tokens, rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert metrics["token_accuracy"] == pytest.approx(hits / tokens)
    assert task.primary.name == "loss"


class ListData(Dataset):
    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]


def test_token_means_span_every_micro_batch_of_a_step() -> None:
    """4 accumulation micro-batches with unequal token counts step like one big batch."""
    lengths = [[6, 6], [2, 3], [6, 1], [4, 2]]  # 10, 3, 5, 4 labelled tokens
    batches = [lm_batch(n, seed=i) for i, n in enumerate(lengths)]
    items = [{k: v[i] for k, v in b.items()} for b in batches for i in range(2)]
    sgd = {"name": "sgd", "lr": 0.5, "momentum": 0.0, "weight_decay": 0}
    cfg = TrainConfig.model_validate(
        {"epochs": 1, "optimizer": sgd, "schedule": {"name": "constant"}}
    )

    def one_step(batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        model = NextToken(seed=3)
        config = cfg.model_copy(update={"grad_accum_steps": accumulation})
        trainer = Trainer(config, task="causal_lm", batch_size=batch_size, progress=False)
        trainer.fit(Supervised(model, task="causal_lm"), InOrder(items), None, {})
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    accumulated = one_step(batch_size=2, accumulation=4)
    whole = one_step(batch_size=8, accumulation=1)
    for key, value in whole.items():
        assert torch.allclose(accumulated[key], value, atol=1e-6), key
    # And both differ from averaging the four micro-batch means (the common mistake).
    model = NextToken(seed=3)
    task = get_task("causal_lm")
    mean_of_means = sum(
        task.supervised_loss(task.logits(model, b), b) for b in batches
    ) / len(batches)
    mean_of_means.backward()
    naive = {n: p.detach() - 0.5 * p.grad for n, p in model.named_parameters()}
    assert not torch.allclose(naive["out.weight"], whole["out.weight"], atol=1e-4)


class InOrder(ListData):
    """Serves its items in a fixed order whatever index the loop's (shuffling) sampler asks
    for, so that micro-batches hold known items."""

    def __init__(self, items: list[dict[str, torch.Tensor]]) -> None:
        super().__init__(items)
        self.asked = 0

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[self.asked % len(self.items)]
        self.asked += 1
        return item


def test_classification_metrics_and_registry() -> None:
    task = TASKS["classification"]
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    batch = {"inputs": torch.zeros(3, 1), "targets": torch.tensor([0, 0, 0])}
    sums = {k: float(v.sum()) for k, v in task.metrics(logits, batch).items()}
    got = task.reduce(sums)
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits, batch["targets"])))
    assert task.positions(batch) is None and int(task.count(batch)) == 3
    with pytest.raises(ConfigError, match="unknown task 'causal-lm' .*did you mean 'causal_lm'"):
        get_task("causal-lm")
