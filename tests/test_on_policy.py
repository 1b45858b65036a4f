"""On-policy KD (GKD): the loss on the student's own samples against the formula, sequence-level
KD on the teacher's, which batches generate, exact resume through generation steps, fraction 0
as plain KD bit for bit, the report, and the mistakes a user makes."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _weights import assert_same_weights, final_weights

import distill.generation as generation
from distill import KD
from distill.cli import main
from distill.config import TrainConfig
from distill.data.text import load_text_files
from distill.data.tokenizers import byte_tokenizer
from distill.errors import ConfigError
from distill.generation import OnPolicy
from distill.methods.base import Progress
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.training import Trainer
from distill.training.signals import TrainingInterrupted

pytest.importorskip("transformers")

EOS, PAD = 258, 256  # the byte tokenizer's


def llama(hidden: int, layers: int = 1, vocab: int | None = 259) -> dict[str, Any]:
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
    }
    return config | ({"vocab_size": vocab} if vocab else {})


def pair(seed: int = 0, vocab: int = 259) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    teacher = create("hf:", config=llama(24, 2), task="causal_lm")
    student = create("hf:", config=llama(16, vocab=vocab), task="causal_lm")
    return teacher, student


# A batch of two packed-text rows (prompts: their first 3 tokens) and a hand-made generation.
IDS = torch.tensor([[10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25]])
BATCH = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": IDS.clone()}
NEW = torch.tensor([[30, 31, EOS, 40, 41], [50, 51, 52, 53, 54]])  # row 1 ends at its EOS
SEQUENCES = [[10, 11, 12, 30, 31, EOS], [20, 21, 22, 50, 51, 52, 53, 54]]
PROMPT = 3


def hand_made(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """Make every generation return NEW; the list collects the models asked to generate."""
    asked: list[torch.nn.Module] = []

    def fake(model: torch.nn.Module, ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        assert ids.tolist() == [[10, 11, 12], [20, 21, 22]]
        asked.append(model)
        return NEW

    monkeypatch.setattr(generation, "sample", fake)
    return asked


def log_probs(model: torch.nn.Module, tokens: list[int], temperature: float) -> torch.Tensor:
    """Row by row, unpadded: log-softmax(logits / T) at the positions predicting the
    generated tokens, [G, V] float64."""
    logits = model(input_ids=torch.tensor([tokens])).logits[0].double()
    return torch.log_softmax(logits[PROMPT - 1 : len(tokens) - 1] / temperature, dim=-1)


def test_the_loss_on_the_students_own_generation_is_the_formula(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher, student = pair()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)  # a confident teacher: a divergence far from 0
    asked = hand_made(monkeypatch)
    t, alpha = 2.0, 0.7
    method = KD(
        teacher,
        student,
        t,
        alpha,
        loss="reverse_kl",
        task="causal_lm",
        on_policy=OnPolicy(byte_tokenizer(), fraction=1.0, prompt_tokens=PROMPT),
    )
    out = method(BATCH)
    assert asked == [student]
    out.loss.backward()
    got = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()

    # Reverse KL(q ‖ p) per generated token, summed over the vocabulary, a plain mean
    # over the 3 + 5 generated tokens (EOS included, what follows it not), times α·T².
    terms = []
    for tokens in SEQUENCES:
        q = log_probs(student, tokens, t)
        with torch.no_grad():
            p = log_probs(teacher, tokens, t)
        for position in range(q.shape[0]):
            terms.append(
                sum(
                    q[position, v].exp() * (q[position, v] - p[position, v])
                    for v in range(q.shape[1])
                )
            )
    assert len(terms) == 8
    want = alpha * t**2 * torch.stack(terms).mean()
    want.backward()
    assert out.parts["ce"] == 0, "no cross-entropy on the student's own samples"
    assert torch.allclose(out.loss.double(), want, rtol=1e-5)
    assert torch.allclose(out.parts["kd"].double(), want, rtol=1e-5)
    assert out.parts["gen_seconds"] >= 0
    assert method.eval()(BATCH).parts["gen_seconds"] == 0, "an evaluation loss is off-policy"
    method.train()
    for name, param in student.named_parameters():
        if name in got:
            assert torch.allclose(got[name], param.grad.float(), rtol=1e-4, atol=1e-7), name


def test_seq_kd_distils_on_the_teachers_generation_with_its_cross_entropy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teacher, student = pair(1)
    asked = hand_made(monkeypatch)
    t, alpha = 1.0, 0.25
    on_policy = OnPolicy(byte_tokenizer(), fraction=1.0, prompt_tokens=PROMPT, seq_kd=True)
    method = KD(
        teacher, student, t, alpha, loss="jsd", beta=0.5, task="causal_lm", on_policy=on_policy
    )
    out = method(BATCH)
    assert asked == [teacher], "the teacher writes the sequences"
    nll, kl = [], []
    with torch.no_grad():
        for tokens in SEQUENCES:
            q, p = log_probs(student, tokens, t), log_probs(teacher, tokens, t)
            targets = torch.tensor(tokens[PROMPT:])
            nll += (-q.gather(1, targets[:, None])[:, 0]).tolist()
            m = torch.logsumexp(torch.stack([p, q]) + torch.tensor(0.5).log(), dim=0)
            kl += (0.5 * (p.exp() * (p - m)).sum(-1) + 0.5 * (q.exp() * (q - m)).sum(-1)).tolist()
    assert out.parts["ce"].item() == pytest.approx((1 - alpha) * sum(nll) / len(nll), rel=1e-5)
    assert out.parts["kd"].item() == pytest.approx(alpha * sum(kl) / len(kl), rel=1e-4)


def test_which_batches_generate_is_drawn_from_the_seed_and_the_step() -> None:
    def pattern(seed: int, fraction: float) -> list[bool]:
        on_policy = OnPolicy(byte_tokenizer(), fraction, seed=seed)
        drawn = []
        for step in range(200):
            for _ in range(2):  # two micro-batches per optimizer step
                drawn.append(on_policy.draw(Progress(step // 50, step)) is not None)
        return drawn

    first = pattern(0, 0.5)
    assert first == pattern(0, 0.5), "a fresh object (a resumed run) draws the same"
    assert first != pattern(1, 0.5)
    assert 0.4 < sum(first) / len(first) < 0.6
    assert first[0::2] != first[1::2], "the micro-batches of a step draw on their own"
    assert not any(pattern(0, 0.0)) and all(pattern(0, 1.0))


def test_fraction_zero_trains_exactly_as_plain_kd(corpus: Path) -> None:
    data = load_text_files(corpus, seq_len=32, split_by="block", subset=32)
    teacher, student = pair(2)
    config = TrainConfig(epochs=2, optimizer={"name": "adamw", "lr": 3e-3}, grad_accum_steps=2)
    weights = []
    for on_policy in (None, OnPolicy(data.tokenizer, fraction=0.0)):
        trained = copy.deepcopy(student)
        method = KD(
            teacher, trained, 1.0, 0.5, loss="reverse_kl", task="causal_lm", on_policy=on_policy
        )
        trainer = Trainer(
            config, task="causal_lm", batch_size=8, collate=data.collate, progress=False, seed=3
        )
        trainer.fit(method, data.train, None, {})
        weights.append(trained.state_dict())
    assert not torch.equal(weights[0]["lm_head.weight"], student.state_dict()["lm_head.weight"])
    for key, value in weights[0].items():
        assert torch.equal(value, weights[1][key]), key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small text files of Python source."""
    folder = tmp_path_factory.mktemp("corpus")
    text = (Path(json.__file__).read_text() * 2)[:6000]
    for i in range(3):
        (folder / f"part{i}.txt").write_text(text[i * 2000 : (i + 1) * 2000])
    return folder


def recipe(corpus: Path) -> dict[str, Any]:
    """Teacher, student alone, off-policy KD and on-policy KD (half the batches generate)."""
    return {
        "seed": 0,
        "task": "causal_lm",
        "data": {
            "name": "text",
            "files": [str(corpus)],
            "seq_len": 32,
            "batch_size": 8,
            "split_by": "block",
            "subset": 40,
        },
        "models": {
            "teacher": {"arch": "hf:", "config": llama(24, 2, vocab=None)},
            **{
                name: {"arch": "hf:", "config": llama(16, vocab=None)}
                for name in ("student", "student_kd", "student_gkd")
            },
        },
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        "stages": [
            {"method": "train", "model": "teacher"},
            {"method": "train", "model": "student"},
            {
                "method": "kd",
                "teacher": "teacher",
                "student": "student_kd",
                "temperature": 1.0,
                "alpha": 0.5,
                "loss": {"kind": "jsd"},
            },
            {
                "method": "kd",
                "teacher": "teacher",
                "student": "student_gkd",
                "temperature": 1.0,
                "alpha": 0.5,
                "loss": {"kind": "jsd"},
                "epochs": 2,
                "cache": "teacher",
                "on_policy": {"fraction": 0.5, "max_new_tokens": 6, "prompt_tokens": 8},
            },
        ],
    }


def test_an_on_policy_recipe_resumes_exactly_and_reports(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = recipe(corpus)
    straight = tmp_path / "straight"
    summary = Pipeline(parse_recipe(raw), straight, progress=False).run()
    calls = {"n": 0, "after": 0}
    original = OnPolicy.generate

    def interrupting(self: OnPolicy, method: Any, batch: Any) -> Any:
        made = original(self, method, batch)
        if made is not None:
            calls["n"] += 1
            if calls["n"] == 3:  # Ctrl-C inside epoch 1, just after a generation step
                os.kill(os.getpid(), signal.SIGINT)
        return made

    out = tmp_path / "interrupted"
    monkeypatch.setattr(OnPolicy, "generate", interrupting)
    with pytest.raises(TrainingInterrupted, match="step"):
        Pipeline(parse_recipe(raw), out, progress=False).run()

    def counting(self: OnPolicy, method: Any, batch: Any) -> Any:
        made = original(self, method, batch)
        calls["after"] += made is not None
        return made

    monkeypatch.setattr(OnPolicy, "generate", counting)
    Pipeline(parse_recipe(raw), out, progress=False, resume=True).run()
    assert calls["after"] > 0, "the resumed run generated"
    assert_same_weights(final_weights(straight), final_weights(out))

    # Generation time is a part of the training record; the off-policy stage has none.
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    parts = {line["stage"]: set(line["train"]) for line in lines}
    assert parts["student_gkd"] == {"ce", "kd", "gen_seconds", "loss"}
    assert parts["student_kd"] == {"ce", "kd", "loss"}
    assert summary["stages"][3]["on_policy"]["fraction"] == 0.5
    assert "on_policy" not in summary["stages"][2]
    report = (straight / "report.md").read_text()
    assert "## On-policy distillation" in report and "| `student_gkd` | student | 0.5 |" in report
    assert "(student_kd)" in report and "(student)" in report, "beside off-policy KD and alone"
    samples = report.split("## Samples")[1]
    assert samples.count("### Prompt") == 3
    for name in ("teacher", "student", "student_kd", "student_gkd"):
        assert samples.count(f"`{name}`:") == 3, name


def test_an_on_policy_recipe_distils_on_the_teachers_sequences_with_seq_kd(
    corpus: Path, tmp_path: Path
) -> None:
    raw = recipe(corpus)
    raw["stages"] = [raw["stages"][0], {**raw["stages"][3], "seq_kd": True, "epochs": 1}]
    summary = Pipeline(parse_recipe(raw), tmp_path / "run", progress=False).run()
    assert summary["stages"][1]["seq_kd"] is True
    assert "| `student_gkd` | teacher (seq_kd) |" in (tmp_path / "run" / "report.md").read_text()


def test_python_api_mistakes_are_one_line_errors() -> None:
    teacher, student = pair(3)
    with pytest.raises(ConfigError, match=r"fraction must be in \[0, 1\], got 1.5"):
        OnPolicy(byte_tokenizer(), fraction=1.5)
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer >= 1"):
        OnPolicy(byte_tokenizer(), max_new_tokens=0)
    with pytest.raises(ConfigError, match="needs a tokenizer with an eos token.*no tokenizer"):
        KD(teacher, student, task="causal_lm", on_policy=OnPolicy(None))

    class NoDecode:
        eos_token_id = EOS

    with pytest.raises(ConfigError, match="decode.*NoDecode"):
        KD(teacher, student, task="causal_lm", on_policy=OnPolicy(NoDecode()))
    other_teacher, small = pair(4, vocab=300)
    with pytest.raises(ConfigError, match="teacher predicts 259 ids and the student 300"):
        KD(other_teacher, small, task="causal_lm", on_policy=OnPolicy(byte_tokenizer()))
    shared = KD(
        other_teacher,
        small,
        task="causal_lm",
        vocab="shared",
        on_policy=OnPolicy(byte_tokenizer(), fraction=1.0, max_new_tokens=3),
    )
    assert shared.on_policy.vocab_limit == 259  # only ids the teacher has are drawn
    assert torch.isfinite(shared(BATCH).loss)
    with pytest.raises(ConfigError, match="on_policy: generation needs task causal_lm"):
        KD(torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), on_policy=OnPolicy(byte_tokenizer()))
    with pytest.raises(ConfigError, match=r"\.generate\(\).*Linear"):
        KD(
            torch.nn.Linear(4, 3),
            torch.nn.Linear(4, 3),
            task="causal_lm",
            on_policy=OnPolicy(byte_tokenizer()),
        )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["on_policy"].update(fraction=1.5),
            ["stages.3.on_policy.fraction", "must be in [0, 1]"],
        ),
        (
            lambda s: s["on_policy"].update(max_new_tokens=0),
            ["stages.3.on_policy.max_new_tokens", "greater than or equal to 1"],
        ),
        (lambda s: s["on_policy"].update(top_p=0), ["stages.3.on_policy.top_p"]),
        (
            lambda s: s.pop("on_policy") and s.update(seq_kd=True),
            ["seq_kd: true needs on_policy settings"],
        ),
        (
            lambda s: s.update(vocab="equal") or s.update(student="student_big"),
            ["stage 'student_big' (kd)", "predict the same classes"],
        ),
    ],
)
def test_recipe_mistakes_are_one_line_errors(
    change: Any, expected: list[str], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = recipe(corpus)
    raw["models"]["student_big"] = {"arch": "hf:", "config": llama(16, vocab=300)}
    change(raw["stages"][3])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)


def test_on_policy_on_an_image_task_is_a_one_line_error(
    tiny_recipe: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    tiny_recipe["stages"][2]["on_policy"] = {"fraction": 0.5}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe, sort_keys=False))
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "stage 'student_kd' (kd): on_policy: generation needs task causal_lm" in err, err


@pytest.mark.parametrize("seq_kd", [False, True])
def test_chunked_on_policy_kd_equals_dense(monkeypatch: pytest.MonkeyPatch, seq_kd: bool) -> None:
    """With chunk_tokens, the generated sequences are scored by the live teacher chunk by
    chunk: the same parts and gradients as the dense loss (no CE on the student's own
    samples, CE on the teacher's with seq_kd)."""
    hand_made(monkeypatch)
    found = []
    for chunk in (None, 3):
        teacher, student = pair(2)
        on_policy = OnPolicy(byte_tokenizer(), fraction=1.0, prompt_tokens=PROMPT, seq_kd=seq_kd)
        method = KD(teacher, student, 1.0, 0.5, loss="jsd", task="causal_lm",
                    on_policy=on_policy, chunk_tokens=chunk)
        out = method(BATCH)
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in student.parameters()])
        found.append((out.parts["ce"], out.parts["kd"], grads))
    (ce, kd, grads), (ce_c, kd_c, grads_c) = found
    assert (ce == 0) != seq_kd and torch.allclose(ce, ce_c, atol=1e-6)
    assert torch.allclose(kd, kd_c, atol=1e-6)
    assert torch.allclose(grads, grads_c, atol=1e-5)
