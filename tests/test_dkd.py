"""The DKD method: its loss against the formula, the warm-up from `progress`, logit
standardisation, the teacher rules, and a recipe run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import distill
from distill.errors import ConfigError
from distill.losses.dkd import dkd_terms
from distill.methods import DKD, Progress
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def make_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    student = nn.Sequential(nn.Linear(6, 5))
    return teacher, student


def grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def z_score(z: torch.Tensor) -> torch.Tensor:
    """Each row's Z-score with the sample standard deviation and the authors' 1e-7."""
    mean = z.mean(dim=1, keepdim=True)
    std = ((z - mean) ** 2).sum(dim=1, keepdim=True).div(z.shape[1] - 1).sqrt()
    return (z - mean) / (std + 1e-7)


@pytest.mark.parametrize("standardize", [False, True])
def test_loss_is_ce_plus_warmed_up_weighted_terms(standardize: bool) -> None:
    teacher, student = make_pair()
    method = DKD(teacher, student, alpha=0.5, beta=3.0, temperature=2.0, warmup_epochs=4,
                 standardize=standardize)
    method.progress = Progress(epoch=1, step=10, epochs=8, steps_per_epoch=5)
    x, y = torch.randn(7, 6), torch.randint(0, 5, (7,))
    out = method(x, y)
    got = grads(student, out.loss)

    with torch.no_grad():
        t = teacher.eval()(x)
    s = student(x)
    ce = F.cross_entropy(s, y)  # never standardised
    s_in, t_in = (z_score(s), z_score(t)) if standardize else (s, t)
    tckd, nckd = dkd_terms(s_in, t_in, y, 2.0)
    factor = 2 / 4  # epoch index 1 (the second epoch) of a 4-epoch warm-up
    want = ce + factor * (0.5 * tckd + 3.0 * nckd)
    assert torch.allclose(out.parts["ce"], ce)
    assert torch.allclose(out.parts["tckd"], factor * 0.5 * tckd)
    assert torch.allclose(out.parts["nckd"], factor * 3.0 * nckd)
    assert torch.allclose(out.loss, want)
    for g, w in zip(got, grads(student, want), strict=True):
        assert torch.allclose(g, w, atol=1e-6)
    assert distill.DKD is DKD


def test_standardize_changes_the_terms() -> None:
    teacher, student = make_pair()
    x, y = torch.randn(7, 6), torch.randint(0, 5, (7,))
    plain = DKD(teacher, student)(x, y)
    z = DKD(teacher, student, standardize=True)(x, y)
    assert torch.equal(plain.parts["ce"], z.parts["ce"])
    assert not torch.allclose(plain.parts["nckd"], z.parts["nckd"])


def test_warmup_factor_follows_the_epoch_index() -> None:
    teacher, student = make_pair()
    method = DKD(teacher, student, warmup_epochs=20)
    x, y = torch.randn(6, 6), torch.randint(0, 5, (6,))
    factors = []
    for epoch, step in [(0, 0), (0, 7), (9, 90), (19, 190), (30, 300)]:
        method.progress = Progress(epoch=epoch, step=step, epochs=40, steps_per_epoch=10)
        factors.append(method.warmup())
        # mdistiller: min(epoch / warmup, 1) with its 1-based epoch, constant within an epoch.
    assert factors == [1 / 20, 1 / 20, 10 / 20, 1.0, 1.0]
    method.progress = Progress(epoch=0)
    first = method(x, y)
    method.progress = Progress(epoch=19)
    full = method(x, y)
    assert torch.allclose(first.parts["nckd"] * 20, full.parts["nckd"])
    assert DKD(teacher, student, warmup_epochs=0).warmup() == 1.0


def test_teacher_frozen_and_only_student_trains() -> None:
    teacher, student = make_pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = DKD(teacher, student).train()
    assert not teacher.training
    params = list(method.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()}
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        out = method(torch.randn(8, 6), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, "alpha"),
        ({"beta": float("nan")}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"warmup_epochs": 1.5}, "warmup_epochs"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_bad_settings(kwargs: dict, match: str) -> None:
    teacher, student = make_pair()
    with pytest.raises(ConfigError, match=match):
        DKD(teacher, student, **kwargs)


def test_logits_of_other_classes_are_refused() -> None:
    teacher, _ = make_pair()
    with pytest.raises(ValueError, match="same classes"):
        DKD(teacher, nn.Linear(6, 4))(torch.randn(3, 6), torch.tensor([0, 1, 2]))


def test_recipe_run(tmp_path: Path) -> None:
    recipe = {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {"teacher": {"arch": "cnn-4"}, "student_dkd": {"arch": "cnn-2"}},
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {"method": "train", "model": "teacher", "epochs": 1},
            {"method": "dkd", "teacher": "teacher", "student": "student_dkd",
             "warmup_epochs": 2, "standardize": True},
        ],
    }
    summary = Pipeline(parse_recipe(recipe), tmp_path / "run", progress=False).run()
    stage = summary["stages"][1]
    assert stage["method"] == "dkd" and stage["warmup_epochs"] == 2 and stage["standardize"]
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    dkd = [x for x in lines if x["stage"] == "student_dkd"]
    assert len(dkd) == 2 and {"ce", "tckd", "nckd"} <= set(dkd[-1]["train"])
    assert 0.0 <= summary["models"]["student_dkd"]["val_accuracy"] <= 1.0


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 7, width: int = 5) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):  # noqa: ANN201
        return {"logits": self.out(self.embed(input_ids))}


def test_causal_lm_tokens_use_only_labelled_positions() -> None:
    torch.manual_seed(0)
    teacher, student = TinyLM(), TinyLM()
    ids = torch.randint(0, 7, (2, 6))
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt
    labels[1, 5] = -100  # padding
    out = DKD(teacher, student, task="causal_lm", warmup_epochs=0)(
        {"input_ids": ids, "labels": labels}
    )
    s = student(ids)["logits"][:, :-1]
    with torch.no_grad():
        t = teacher(ids)["logits"][:, :-1]
    targets, mask = labels[:, 1:], labels[:, 1:] != -100
    ce = F.cross_entropy(s[mask], targets[mask])  # mean over the labelled tokens
    tckd, nckd = dkd_terms(s[mask], t[mask], targets[mask], 4.0)
    assert torch.allclose(out.loss, ce + 1.0 * tckd + 8.0 * nckd)
