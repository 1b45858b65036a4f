"""DistillationTrainer: a transformers.Trainer that trains a distill method's student, with
tiny config-built llama models (hidden 32, 2 layers, vocab 300)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import distill
from distill.data.collate import collate_text
from distill.methods.fitnets import FitNets

transformers = pytest.importorskip("transformers")
from distill.integrations.transformers import (  # noqa: E402
    METHOD_STATE,
    DistillationTrainer,
)
from distill.models.hf import create_hf  # noqa: E402

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 300,
    "max_position_embeddings": 64,
}


def llama(seed: int, **fields: Any) -> nn.Module:
    torch.manual_seed(seed)
    return create_hf("", config={**LLAMA, **fields})


def sequences(lengths: list[int], prompt: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Token sequences of the given lengths; item ``i`` of ``prompt`` gets its first
    ``prompt[i]`` labels masked (−100), as when training on completions only."""
    generator = torch.Generator().manual_seed(1)
    items = []
    for i, n in enumerate(lengths):
        ids = torch.randint(0, LLAMA["vocab_size"], (n,), generator=generator)
        labels = ids.clone()
        labels[: (prompt or {}).get(i, 0)] = -100
        items.append({"input_ids": ids, "labels": labels})
    return items


def arguments(out: Path, **overrides: Any) -> Any:
    options: dict[str, Any] = {
        "per_device_train_batch_size": 2,
        "max_steps": 1,
        "learning_rate": 1e-3,
        "report_to": "none",
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": 0,
    }
    return transformers.TrainingArguments(str(out), **{**options, **overrides})


class Gradients(transformers.TrainerCallback):
    """Keeps the gradients of the optimizer's last step (after accumulation)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def gradients_of(loss: torch.Tensor, model: nn.Module) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


# -- per-token normalisation under gradient accumulation -------------------------------------


@pytest.mark.parametrize("batch_size", [1, 2])
def test_accumulated_micro_batches_give_the_gradient_of_one_big_batch(
    tmp_path: Path, batch_size: int
) -> None:
    # 4 micro-batches of unequal token counts (a masked prompt in one; padded rows when 2 per
    # micro-batch): their accumulated gradient is that of the token mean over the whole step.
    teacher, student = llama(0), llama(1)
    method = distill.KD(teacher, student, temperature=2.0, alpha=0.5, task="causal_lm")
    lengths = [3, 11, 6, 14, 4, 9, 12, 5][: 4 * batch_size]
    items = sequences(lengths, prompt={1: 4})
    big = collate_text(items)  # one batch, right-padded to the longest
    reference = method(big)
    expected = gradients_of(reference.loss, student)
    grab = Gradients()
    trainer = DistillationTrainer(
        method,
        args=arguments(
            tmp_path,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=4,
            max_grad_norm=0.0,
        ),
        train_dataset=items,
        data_collator=collate_text,
        callbacks=[grab],
    )
    trainer.train()
    assert grab.grads.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(grab.grads[name], grad, rtol=0, atol=1e-6, msg=name)
    # The logged step loss is the token mean over the whole step too.
    logged = trainer.state.log_history[0]
    assert logged["loss"] == pytest.approx(reference.loss.item(), abs=1e-6)
    assert logged["kd"] == pytest.approx(reference.parts["kd"].item(), abs=1e-6)
    assert logged["ce"] == pytest.approx(reference.parts["ce"].item(), abs=1e-6)
    if batch_size == 1:
        # The mean of the 4 micro-batch means (what dividing by the accumulation steps gives)
        # is a different gradient: the test above can tell them apart.
        naive = [gradients_of(method(collate_text([item])).loss, student) for item in items]
        gap = max(
            (sum(g[name] for g in naive) / 4 - expected[name]).abs().max().item()
            for name in expected
        )
        assert gap > 1e-4, gap


# -- the teacher stays out; the student is what the Trainer trains and saves ------------------


def test_teacher_out_of_optimizer_wrapping_and_checkpoints(tmp_path: Path) -> None:
    teacher, student = llama(0, hidden_size=48), llama(1)
    method = distill.KD(teacher, student, temperature=2.0, alpha=0.5, task="causal_lm")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    items = sequences([5, 9, 7, 12])
    trainer = DistillationTrainer(
        method,
        args=arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=1),
        train_dataset=items,
        eval_dataset=items,
        data_collator=collate_text,
    )
    trainer.train()
    teacher_params = {id(p) for p in teacher.parameters()}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in student.parameters()}
    assert not teacher_params & {id(p) for p in optimised}
    assert trainer.model is student and trainer.model_wrapped is student
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    # Checkpoints and save_model hold the student only, loadable by transformers.
    saved = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    assert saved.keys() == student.state_dict().keys()
    assert not (tmp_path / "checkpoint-2" / METHOD_STATE).exists()  # KD trains nothing else
    trainer.save_model(str(tmp_path / "student"))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    ids = collate_text(items)["input_ids"]
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits)
    # Evaluation logs the parts too, as the token means over the evaluation set.
    metrics = trainer.evaluate()
    method.eval()
    with torch.no_grad():
        parts = method(collate_text(items)).parts
    assert metrics["eval_kd"] == pytest.approx(parts["kd"].item(), rel=1e-5)
    assert metrics["eval_ce"] == pytest.approx(parts["ce"].item(), rel=1e-5)


def test_fitnets_hints_on_hidden_states_train_and_resume_the_regressor(tmp_path: Path) -> None:
    # FitNets' hint phase by layer names: the student's layer 0 (width 32) learns the
    # teacher's layer 1 (width 48) through a trained linear regressor.
    teacher, student = llama(0, hidden_size=48), llama(1)
    items = sequences([5, 9, 7, 12])
    hints = FitNets(
        teacher,
        student,
        collate_text(items),
        hint_layer="model.layers.1",
        guided_layer="model.layers.0",
        task="causal_lm",
    )
    head = student.lm_head.weight.clone()
    regressor = {k: v.clone() for k, v in hints.regressor.state_dict().items()}
    trainer = DistillationTrainer(
        hints,
        args=arguments(tmp_path, max_steps=2, save_strategy="steps", save_steps=1),
        train_dataset=items,
        data_collator=collate_text,
    )
    trainer.train()
    assert "hint" in trainer.state.log_history[0]
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in hints.regressor.parameters()} <= optimised
    assert not any(torch.equal(v, regressor[k]) for k, v in hints.regressor.state_dict().items())
    assert torch.equal(student.lm_head.weight, head)  # after the guided layer: untouched
    saved = load_file(tmp_path / "checkpoint-1" / METHOD_STATE)
    assert set(saved) == {"regressor.weight", "regressor.bias"}
    # Resuming restores the regressor of the checkpoint.
    trained = {k: v.clone() for k, v in hints.regressor.state_dict().items()}
    fresh = FitNets(
        llama(0, hidden_size=48),
        llama(1),
        collate_text(items),
        hint_layer="model.layers.1",
        guided_layer="model.layers.0",
        task="causal_lm",
    )
    again = DistillationTrainer(
        fresh,
        args=arguments(tmp_path, max_steps=2),
        train_dataset=items,
        data_collator=collate_text,
    )
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for key, value in fresh.regressor.state_dict().items():
        torch.testing.assert_close(value, trained[key])


# -- bad input -------------------------------------------------------------------------------


def test_refuses_what_is_not_a_distiller(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must be a distill Distiller.*got LlamaForCausalLM"):
        DistillationTrainer(llama(0), args=arguments(tmp_path))


def test_refuses_a_method_that_updates_models_one_after_another(tmp_path: Path) -> None:
    cohort = distill.DML([llama(0), llama(1)], task="causal_lm")
    with pytest.raises(ValueError, match="one after another.*distill.training.Trainer"):
        DistillationTrainer(cohort, args=arguments(tmp_path))


def test_refuses_a_model_outside_the_method_or_a_teacher(tmp_path: Path) -> None:
    teacher, student = llama(0), llama(1)
    method = distill.KD(teacher, student, task="causal_lm")
    with pytest.raises(ValueError, match="must be the module of the method that trains"):
        DistillationTrainer(method, args=arguments(tmp_path), model=llama(2))
    with pytest.raises(ValueError, match="not a teacher"):
        DistillationTrainer(method, args=arguments(tmp_path), model=teacher)


def test_refuses_resuming_a_checkpoint_without_the_method_state(tmp_path: Path) -> None:
    items = sequences([5, 9])
    hints = FitNets(
        llama(0, hidden_size=48),
        llama(1),
        collate_text(items),
        hint_layer="model.layers.1",
        guided_layer="model.layers.0",
        task="causal_lm",
    )
    trainer = DistillationTrainer(
        hints, args=arguments(tmp_path), train_dataset=items, data_collator=collate_text
    )
    os.makedirs(tmp_path / "checkpoint-9")
    with pytest.raises(ValueError, match=f"has no {METHOD_STATE}"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-9"))


# -- the README's example --------------------------------------------------------------------


def test_readme_trainer_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_readme import code_after

    code = code_after("<!-- example:hf-trainer -->")
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    trainer, student = namespace["trainer"], namespace["student"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all({"ce", "kd"} <= set(entry) for entry in logged)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "runs/hf-kd/student")
    assert loaded.state_dict().keys() == student.state_dict().keys()  # no teacher in it
    ids = torch.randint(0, 259, (2, 7), generator=torch.Generator().manual_seed(0))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, student(input_ids=ids).logits)
