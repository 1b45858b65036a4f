"""KD with ``chunk_tokens``: the same loss and gradients as the dense path (live teachers, stored
top-k teachers, top-p stores), the CE term and the token mean kept, never more than a chunk
of logits at once, and the models and values it refuses."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from distill import KD, Teacher
from distill.config import TrainConfig
from distill.errors import ConfigError
from distill.losses import DIVERGENCES, topk_from_logits
from distill.losses.sparse import TopK
from distill.models import create
from distill.training import Trainer

pytest.importorskip("transformers")

VOCAB = 40


def llama(hidden: int, layers: int = 1) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "vocab_size": VOCAB,
    }


def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = create("hf:", config=llama(16, 2), task="causal_lm")
    with torch.no_grad():
        teacher.lm_head.weight.mul_(4.0)  # a peaked teacher
    return teacher, create("hf:", config=llama(8), task="causal_lm")


def batch() -> dict[str, torch.Tensor]:
    """Three sequences: one whole, one with a prompt (no loss on it), one padded."""
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12))
    labels = ids.clone()
    labels[1, :4] = -100
    labels[2, 7:] = -100
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(3)}


class FixedStore:
    """A store that answers every batch with one TopK."""

    def __init__(self, top: TopK) -> None:
        self.top = top

    def lookup(self, batch: Any, compute: Any) -> TopK:
        return self.top

    def flush(self) -> None:
        pass


def grads(method: KD, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, list]:
    out = method(b)
    out.loss.backward()
    return out.loss.detach(), out.parts, [p.grad.clone() for p in method.student.parameters()]


def assert_same(dense: KD, chunked: KD, b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    loss_a, parts_a, grads_a = grads(dense, b)
    loss_b, parts_b, grads_b = grads(chunked, b)
    assert torch.allclose(loss_a, loss_b, atol=atol, rtol=0)
    for name in ("ce", "kd"):
        assert torch.allclose(parts_a[name], parts_b[name], atol=atol, rtol=0), name
    assert len(grads_a) == len(grads_b)
    for a, b_ in zip(grads_a, grads_b, strict=True):
        assert torch.allclose(a, b_, atol=atol, rtol=0), (a - b_).abs().max()


def pair(teacher: Any, student: nn.Module, chunk: int, **options: Any) -> tuple[KD, KD]:
    options = {"temperature": 2.0, "alpha": 0.5, "task": "causal_lm", **options}
    twin = copy.deepcopy(student)
    return KD(teacher, student, **options), KD(teacher, twin, chunk_tokens=chunk, **options)


@pytest.mark.parametrize("kind", [None, *DIVERGENCES])
def test_chunked_equals_dense_with_a_live_teacher(kind: str | None) -> None:
    teacher, student = models()
    dense, chunked = pair(teacher, student, chunk=7, loss=kind)  # 7 does not divide 24 tokens
    assert_same(dense, chunked, batch())


def test_chunked_equals_dense_with_standardized_logits_and_one_token_chunks() -> None:
    teacher, student = models()
    dense, chunked = pair(teacher, student, chunk=1, standardize=True, loss="jsd")
    assert_same(dense, chunked, batch())


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "tvd"])
def test_chunked_equals_dense_with_a_stored_topk_teacher(kind: str) -> None:
    teacher, student = models()
    b = batch()
    with torch.no_grad():
        logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    store = FixedStore(topk_from_logits(logits[:, :-1], 5, 2.0))
    dense, chunked = pair(Teacher(None, "causal_lm", store=store), student, chunk=5, loss=kind)
    assert_same(dense, chunked, b)


def test_chunked_equals_dense_with_a_top_p_store() -> None:
    """Positions keeping fewer ids (-inf in their last slots) on both paths."""
    teacher, student = models()
    b = batch()
    with torch.no_grad():
        logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    top = topk_from_logits(logits[:, :-1], 6, 2.0)
    logprobs = top.logprobs.clone()
    logprobs[0, :, 3:] = -torch.inf  # the first sequence keeps 3 ids, the others 6
    rest = torch.logsumexp(torch.cat([top.logprobs[..., 3:], top.rest[..., None]], -1), -1)
    ragged = TopK(top.ids, logprobs, torch.where(torch.arange(3)[:, None] == 0, rest, top.rest))
    store = FixedStore(ragged)
    dense, chunked = pair(Teacher(None, "causal_lm", store=store), student, chunk=4, loss="jsd")
    assert_same(dense, chunked, b)


def test_a_full_vocabulary_store_equals_the_live_teacher() -> None:
    """k = V: the stored top-k path is the dense loss, chunked or not."""
    teacher, student = models()
    b = batch()
    with torch.no_grad():
        logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    full = topk_from_logits(logits[:, :-1], VOCAB, 2.0)
    store = Teacher(None, "causal_lm", store=FixedStore(full))
    for kind in (None, "reverse_kl", "jsd"):
        live, stored = pair(teacher, student, chunk=6, loss=kind)
        stored.teacher = store
        assert_same(live, stored, b)
        student.zero_grad()


def test_the_output_layers_never_see_more_than_a_chunk() -> None:
    teacher, student = models()
    seen: list[tuple[str, tuple[int, ...]]] = []
    for name, model in (("teacher", teacher), ("student", student)):
        model.lm_head.register_forward_hook(
            lambda m, args, out, name=name: seen.append((name, tuple(out.shape)))
        )
    method = KD(teacher, student, task="causal_lm", chunk_tokens=5)
    method(batch()).loss.backward()
    method(batch()).loss.backward()
    # The first call checks each output layer once on one sequence (the model's own logits and
    # the layer on its hidden states); after that no output layer ever computes more than 5
    # positions' logits (the model's own forward hands it an empty sequence).
    big = [(n, s) for n, s in seen if s[-1] == VOCAB and s[0] * (s[1] if len(s) == 3 else 1) > 5]
    assert sorted(big) == [
        (name, (1, n, VOCAB)) for name in ("student", "teacher") for n in (11, 12)
    ]
    assert any(s == (5, VOCAB) for _, s in seen) and any(s[1] == 0 for _, s in seen if len(s) == 3)


def test_the_loop_trains_chunked_as_dense_with_gradient_accumulation() -> None:
    """Token means over the step (two micro-batches of different token counts) kept."""
    teacher, student = models()
    twin, initial = copy.deepcopy(student), copy.deepcopy(student)
    data = [batch() for _ in range(4)]
    for i, item in enumerate(data):
        item["labels"][0, : i + 1] = -100  # different token counts per micro-batch
    config = TrainConfig(epochs=1, grad_accum_steps=2, optimizer={"name": "sgd", "lr": 0.5})
    results = []
    for model, chunk in ((student, None), (twin, 4)):
        method = KD(teacher, model, task="causal_lm", alpha=0.5, chunk_tokens=chunk)
        trainer = Trainer(config, task="causal_lm", batch_size=3, progress=False, device="cpu")
        loader = [{k: v for k, v in d.items()} for d in data]
        trainer.fit(method, ListData(loader), None, {})
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    moved = zip(results[0], initial.parameters(), strict=True)
    assert all(not torch.equal(a, b) for a, b in moved)


class ListData(torch.utils.data.Dataset):
    """Items that are already whole batches (one per item), unbatched by the loader."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.items = [
            {k: v[j] for k, v in b.items() if k != "index"} for b in batches for j in range(3)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_chunk_tokens_must_be_a_positive_integer(value: Any) -> None:
    teacher, student = models()
    with pytest.raises(ConfigError, match=f"chunk_tokens must be an integer >= 1, got {value!r}"):
        KD(teacher, student, task="causal_lm", chunk_tokens=value)


class SoftCapped(nn.Module):
    """A causal LM whose logits are soft-capped after its output layer (as Gemma 2's)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self) -> nn.Module:
        return self.inner.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None) -> torch.Tensor:
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        return 2.0 * torch.tanh(logits / 2.0)


def test_models_whose_logits_are_not_the_output_layer_are_refused() -> None:
    teacher, student = models()
    method = KD(teacher, SoftCapped(student), task="causal_lm", chunk_tokens=4)
    with pytest.raises(ConfigError, match="not its output layer applied to its last hidden"):
        method(batch())
    plain = nn.Sequential(nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB))
    with pytest.raises(ConfigError, match="needs a model whose output layer is known"):
        KD(teacher, plain, task="causal_lm", chunk_tokens=4)


def test_two_processes_train_chunked_as_one_with_the_global_batch(tmp_path: Path) -> None:
    """Under DistributedDataParallel (which looks for parameters a forward did not use) the
    output layer gets its gradient once, from the chunked loss: 2 CPU processes with batch B
    end with the weights of 1 process with batch 2B."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(Path(json.__file__).read_text()[:4000])
    config = {k: v for k, v in llama(16).items() if k != "vocab_size"}
    teacher = create("hf:", config={**config, "num_hidden_layers": 2}, task="causal_lm",
                     vocab_size=259)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    recipe = {
        "seed": 0,
        "task": "causal_lm",
        "data": {"name": "text", "files": [str(corpus)], "seq_len": 24, "batch_size": 8,
                 "split_by": "block", "subset": 64},  # 4 global batches of 16
        "models": {"teacher": {"arch": "hf:", "config": {**config, "num_hidden_layers": 2},
                               "checkpoint": str(tmp_path / "teacher.pt")},
                   "student": {"arch": "hf:", "config": {**config, "hidden_size": 8}}},
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 1.0e-3}},
        "stages": [{"method": "kd", "teacher": "teacher", "student": "student",
                    "temperature": 2.0, "alpha": 0.5, "chunk_tokens": 50}],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for processes, batch in ((1, 16), (2, 8)):
        recipe["data"]["batch_size"] = batch
        path = tmp_path / f"r{processes}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        out = tmp_path / f"run{processes}"
        command = ["run", str(path), "--out", str(out), "--quiet", "--device", "cpu"]
        if processes == 1:
            command = [sys.executable, "-m", "distill.cli", *command]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                       "--master_addr", "127.0.0.1", "--master_port", str(port), "-m",
                       "distill.cli", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[processes] = torch.load(out / "checkpoints" / "student.pt", weights_only=True)
    one, two = (r.get("state_dict", r) for r in (runs[1], runs[2]))
    for name, value in one.items():
        assert torch.allclose(value, two[name], atol=1e-4), name


def test_a_sharded_live_teacher_is_refused_with_chunk_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A sharded teacher's output layer cannot run chunk by chunk outside its forward: one
    line before anything trains, naming the placement and the ways out."""
    from distill.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(Path(json.__file__).read_text()[:2000])
    config = {k: v for k, v in llama(16).items() if k != "vocab_size"}
    recipe = {
        "seed": 0,
        "task": "causal_lm",
        "data": {"name": "text", "files": [str(corpus)], "seq_len": 24, "batch_size": 8,
                 "split_by": "block"},
        "models": {"teacher": {"arch": "hf:", "config": config},
                   "student": {"arch": "hf:", "config": {**config, "hidden_size": 8}}},
        "train": {"epochs": 1, "strategy": "fsdp"},
        "stages": [{"method": "train", "model": "teacher"},
                   {"method": "kd", "teacher": "teacher", "student": "student",
                    "temperature": 2.0, "alpha": 0.5, "chunk_tokens": 50}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "chunk_tokens" in err and "teacher_placement: shard" in err
    assert "teacher_placement: replicate" in err and "teacher_logits" in err
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
