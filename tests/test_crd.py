"""The CRD method: its loss and memory update against the formula, what trains and what is
saved, the negatives' generator, bad input, and exact resume of a recipe run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _nets import Net
from _weights import assert_same_weights, final_weights

import distill
from distill.errors import ConfigError
from distill.methods import CRD, METHODS, StageContext
from distill.methods.crd import CRDStage
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.tasks import get_task
from distill.training.distributed import trained_members

N_TRAIN, K, DIM, T, M = 10, 4, 3, 0.5, 0.25


def make(**kwargs) -> tuple[CRD, Net, Net]:  # noqa: ANN003
    torch.manual_seed(0)
    teacher, student = Net(12), Net(5)
    settings = {"dim": DIM, "num_negatives": K, "nce_temperature": T, "momentum": M} | kwargs
    method = CRD(teacher, student, torch.randn(4, 6), N_TRAIN, 0.6, **settings)
    return method, teacher, student


def batch(n: int = 4, start: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "inputs": torch.randn(n, 6),
        "targets": torch.randint(0, 3, (n,)),
        "index": torch.arange(start, start + n),
    }


def nce(anchor: torch.Tensor, bank: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One direction of the loss, written out: scores exp(<m, v>/T) against the bank rows of
    the positive then the negatives, divided by Z = mean(scores) · n (first batch), then
    -(1/N) Σ_i [log P_i0 / (P_i0 + c + eps) + Σ_k log c / (P_ik + c + eps)] with c = K / n."""
    raw = torch.stack(
        [
            torch.stack([torch.exp(bank[j] @ anchor[i] / T) for j in rows[i]])
            for i in range(len(rows))
        ]
    )
    p = raw / (raw.detach().mean() * N_TRAIN)
    c, eps = K / N_TRAIN, 1e-7
    total = 0.0
    for i in range(len(rows)):
        total = total + torch.log(p[i, 0] / (p[i, 0] + c + eps))
        for k in range(1, K + 1):
            total = total + torch.log(c / (p[i, k] + c + eps))
    return -total / len(rows)


def test_loss_and_memory_update_follow_the_formula() -> None:
    method, teacher, student = make()
    b = batch()
    negatives = torch.tensor([[0, 1, 2, 9], [9, 9, 8, 0], [1, 1, 1, 1], [2, 4, 3, 0]])
    method.memory.sample_negatives = lambda index, generator=None: negatives
    bank_s = method.memory.student_memory.clone()
    bank_t = method.memory.teacher_memory.clone()
    out = method.train()(b)
    params = [*student.parameters(), *method.embed_s.parameters(), *method.embed_t.parameters()]
    got = torch.autograd.grad(out.loss, params)

    with torch.no_grad():
        f_t = teacher.body(b["inputs"])
    f_s = student.body(b["inputs"])
    v_s = F.normalize(method.embed_s.linear(f_s), dim=1)
    v_t = F.normalize(method.embed_t.linear(f_t), dim=1)
    rows = torch.cat([b["index"][:, None], negatives], dim=1)
    ce = F.cross_entropy(student.head.fc(f_s), b["targets"])
    crd_s = 0.6 * nce(v_s, bank_t, rows)  # the student's anchor against the teacher's bank
    crd_t = 0.6 * nce(v_t, bank_s, rows)
    want = ce + crd_s + crd_t
    assert torch.allclose(out.parts["ce"], ce)
    assert torch.allclose(out.parts["crd_s"], crd_s, rtol=1e-5)
    assert torch.allclose(out.parts["crd_t"], crd_t, rtol=1e-5)
    for g, w in zip(got, torch.autograd.grad(want, params), strict=True):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6)
    # Memory: each seen row moves to normalise(m · old + (1 - m) · new); the others stay.
    banks = [method.memory.student_memory, method.memory.teacher_memory]
    for bank, old, v in zip(banks, (bank_s, bank_t), (v_s, v_t), strict=True):
        for i, row in enumerate(b["index"].tolist()):
            moved = F.normalize(M * old[row] + (1 - M) * v[i].detach(), dim=0)
            assert torch.allclose(bank[row], moved)
        others = [r for r in range(N_TRAIN) if r not in b["index"].tolist()]
        assert torch.equal(bank[others], old[others])
    assert int(method.draws) == 1
    assert distill.CRD is CRD


def test_defaults_are_the_papers() -> None:
    method, _, _ = make(dim=128, num_negatives=16384, nce_temperature=0.07, momentum=0.5)
    memory = method.memory
    assert (memory.dim, memory.num_negatives, memory.temperature, memory.momentum) == (
        128,
        16384,
        0.07,
        0.5,
    )
    spec = CRDStage(teacher="t", student="s")
    assert (spec.beta, spec.dim, spec.num_negatives, spec.nce_temperature, spec.momentum) == (
        0.8,
        128,
        16384,
        0.07,
        0.5,
    )


def test_what_trains_and_what_is_saved() -> None:
    method, teacher, student = make()
    trainable = {id(p) for p in method.trainable_parameters()}
    want = [*student.parameters(), *method.embed_s.parameters(), *method.embed_t.parameters()]
    assert trainable == {id(p) for p in want} and len(want) == 8
    state = method.trainable_state_dict()
    for key in ("memory.student_memory", "memory.teacher_memory", "memory.z_student",
                "memory.z_teacher", "draws", "embed_t.linear.weight"):
        assert key in state, key
    assert not any(k.startswith("teacher.") for k in state)
    # Only modules with trainable parameters are wrapped for data parallelism.
    assert {name for _, name, _ in trained_members(method)} == {"student", "embed_s", "embed_t"}
    # The teacher never changes and never gets a gradient.
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    for start in (0, 4):
        out = method.train()(batch(start=start))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_negatives_come_from_the_seed_and_the_step_count() -> None:
    first, _, _ = make()
    second, _, _ = make()
    other_seed, _, _ = make(seed=1)
    a, b, c = (m.train()(batch()).loss for m in (first, second, other_seed))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Eval mode scores without touching the memory or the count.
    bank = first.memory.student_memory.clone()
    first.eval()(batch(start=0))
    assert torch.equal(first.memory.student_memory, bank) and int(first.draws) == 1
    # The next step draws other negatives: a fresh model at draws=1 reproduces it.
    first.train()
    second.load_trainable_state_dict(first.trainable_state_dict())
    assert torch.equal(first(batch(start=5)).loss, second.train()(batch(start=5)).loss)


def test_bad_input() -> None:
    method, teacher, student = make()
    with pytest.raises(ConfigError, match=r"batch\['index'\]"):
        method(torch.randn(4, 6), torch.randint(0, 3, (4,)))
    with pytest.raises(ConfigError, match="train_size must be an integer >= 2, got 0"):
        CRD(teacher, student, torch.randn(4, 6), 0)
    with pytest.raises(ConfigError, match=r"student_layer: .*'head.flaten'"):
        CRD(teacher, student, torch.randn(4, 6), 10, student_layer="head.flaten")
    spec = METHODS["crd"].model_validate({"method": "crd", "teacher": "t", "student": "s"})
    models = {"t": teacher, "s": student}
    task = get_task("classification")
    no_index = StageContext(models, {"inputs": torch.randn(4, 6)}, task, train_size=10)
    with pytest.raises(ConfigError, match=r"stage 's' \(crd\): .*no 'index'"):
        spec.check(no_index)
    empty = StageContext(models, batch(), task, train_size=0)
    with pytest.raises(ConfigError, match=r"stage 's' \(crd\): .*train_size"):
        spec.check(empty)


RECIPE = {
    "seed": 0,
    "data": {"name": "digits", "subset": 120, "batch_size": 32},
    "models": {"teacher": {"arch": "cnn-4"}, "student_crd": {"arch": "cnn-2"}},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "stages": [
        {"method": "train", "model": "teacher", "epochs": 1},
        {"method": "crd", "teacher": "teacher", "student": "student_crd", "num_negatives": 32},
    ],
}


class Crash(RuntimeError):
    pass


def test_resume_gives_the_same_weights_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[CRD] = []
    original_build = CRDStage.build

    def build(self, ctx):  # noqa: ANN001, ANN202
        method = original_build(self, ctx)
        built.append(method)
        return method

    monkeypatch.setattr(CRDStage, "build", build)

    def run(out: Path, **kw) -> CRD:  # noqa: ANN003
        Pipeline(parse_recipe(RECIPE), out, progress=False, **kw).run()
        return built[-1]

    straight = run(tmp_path / "straight")

    calls = {"n": 0}
    original_append = Pipeline._append_metrics

    def crashing(self, *args, **kwargs):  # noqa: ANN001, ANN202
        original_append(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the teacher's epoch, then the CRD stage's first
            raise Crash

    monkeypatch.setattr(Pipeline, "_append_metrics", crashing)
    with pytest.raises(Crash):
        run(tmp_path / "resumed")
    monkeypatch.setattr(Pipeline, "_append_metrics", original_append)
    resumed = run(tmp_path / "resumed", resume=True)

    assert_same_weights(final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed"))
    want, got = straight.trainable_state_dict(), resumed.trainable_state_dict()
    assert set(want) == set(got)
    assert_same_weights({"crd": want}, {"crd": got})
    steps = 2 * math.ceil(96 / 32)  # 2 epochs of the 96 training images
    assert int(got["draws"]) == steps
    # The memory really moved: every training sample's row is unit-norm after its updates.
    assert torch.allclose(got["memory.student_memory"].norm(dim=1), torch.ones(96))


def _two_process_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        method, _, _ = make()
        method.train()
        # Rank 0 sees samples 0-3, rank 1 a shorter batch, 3-5: sample 3 is on both.
        b = batch(4, 0) if rank == 0 else batch(3, 3)
        for _ in range(2):
            method(b).loss.backward()
        torch.save(method.trainable_state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_identical_memories(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_two_process_worker, args=(port, str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for key in ("memory.student_memory", "memory.teacher_memory", "memory.z_student", "draws"):
        assert torch.equal(states[0][key], states[1][key]), key
    method, _, _ = make()
    initial = method.memory.student_memory
    moved = states[0]["memory.student_memory"]
    # Every sample of either process moved (unit norm), the others did not.
    assert torch.allclose(moved[:6].norm(dim=1), torch.ones(6))
    assert torch.equal(moved[6:], initial[6:])
    assert int(states[0]["draws"]) == 2
