"""The Teacher object: frozen, always in eval mode, its own precision, an output store, never
optimised, checkpointed or wrapped for data parallelism."""

from __future__ import annotations

import torch
from torch import nn

import distill
from distill.cache import CacheSettings, TeacherCache
from distill.teachers import Teacher
from distill.training.distributed import trained_members


def teacher_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 3))


INPUTS = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))


def batch(n: int = 8) -> dict[str, torch.Tensor]:
    """The first ``n`` samples (sample ``i`` is always the same)."""
    return {"inputs": INPUTS[:n], "targets": torch.zeros(n, dtype=torch.long),
            "index": torch.arange(n)}


def test_frozen_and_in_eval_mode_whatever_is_asked() -> None:
    module = teacher_net()
    teacher = Teacher(module)
    teacher.train()
    assert not module.training and not any(p.requires_grad for p in module.parameters())
    method = distill.KD(teacher, nn.Linear(6, 3))
    method.train()
    assert not module.training and method.student.training
    out = teacher(batch())
    assert out.dtype == torch.float32 and not out.requires_grad
    assert torch.equal(out, teacher(batch())), "eval mode: dropout off, same outputs"
    assert method.teachers() == [teacher]
    assert not any(k.startswith("teacher.") for k in method.trainable_state_dict())
    assert {id(p) for p in method.trainable_parameters()} == {
        id(p) for p in method.student.parameters()
    }
    assert [key for _, key, _ in trained_members(method)] == ["student"]


def test_precision_applies_to_the_teacher_only() -> None:
    module = teacher_net()
    dtypes: list[torch.dtype] = []
    module[0].register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    Teacher(module, precision="bf16")(batch())
    Teacher(module)(batch())
    assert dtypes == [torch.bfloat16, torch.float32]


def test_a_store_runs_the_teacher_only_for_samples_it_has_not_seen() -> None:
    store = TeacherCache(8, 3, "fp", CacheSettings(dtype="float32"))
    teacher = Teacher(teacher_net(), store=store)
    plain = Teacher(teacher_net())
    first = teacher(batch(4))
    assert teacher.calls == 1
    whole = teacher(batch(8))  # 4 stored, 4 new
    assert teacher.calls == 2 and store.hits == 4 and store.misses == 8
    teacher(batch(8))
    assert teacher.calls == 2, "everything is stored now"
    assert torch.allclose(whole, plain(batch(8)), atol=1e-6)
    assert torch.allclose(first, whole[:4], atol=1e-6)


def test_features_stop_after_the_last_tapped_layer() -> None:
    module = teacher_net()
    ran: list[str] = []
    module[3].register_forward_hook(lambda *a: ran.append("last"))
    features = Teacher(module).features(batch(), ["1"])
    assert features["1"].shape == (8, 16) and ran == []
