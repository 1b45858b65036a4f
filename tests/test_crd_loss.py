"""CRD: the NCE loss and the contrast memory against naive computations, on tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.crd import contrast_scores, crd_nce_loss
from distill.memory import ContrastMemory, Embed

N_SAMPLES, K, DIM, T = 50, 8, 4, 0.07


def naive_nce(scores: torch.Tensor, n: int, eps: float = 1e-7) -> torch.Tensor:
    """-(1/N) sum_i [log P_i0/(P_i0 + K/n + eps) + sum_k log (K/n)/(P_ik + K/n + eps)]."""
    rows, cols = scores.shape
    c = (cols - 1) / n
    total = torch.zeros((), dtype=torch.float64)
    for i in range(rows):
        p = scores[i].double()
        total = total + torch.log(p[0] / (p[0] + c + eps))
        for k in range(1, cols):
            total = total + torch.log(c / (p[k] + c + eps))
    return -total / rows


def memory(seed: int = 0, **options) -> ContrastMemory:
    generator = torch.Generator().manual_seed(seed)
    settings = dict(dim=DIM, num_negatives=K, temperature=T, momentum=0.5)
    settings.update(options)
    return ContrastMemory(N_SAMPLES, generator=generator, **settings)


def unit(rows: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, DIM, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_nce_loss_matches_formula_value_and_gradient() -> None:
    torch.manual_seed(0)
    scores = (torch.rand(3, K + 1, dtype=torch.float64) * 0.5).requires_grad_(True)
    got_in = scores.detach().float().requires_grad_(True)
    got = crd_nce_loss(got_in, N_SAMPLES)
    want = naive_nce(scores, N_SAMPLES)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=1e-5)
    got.backward()
    want.backward()
    assert torch.allclose(got_in.grad.double(), scores.grad, rtol=1e-4)


def test_contrast_scores_match_loops() -> None:
    anchors, candidates = unit(3, 1), torch.randn(3, K + 1, DIM)
    got = contrast_scores(anchors, candidates, T)
    for i in range(3):
        for k in range(K + 1):
            dot = sum(candidates[i, k, d] * anchors[i, d] for d in range(DIM))
            assert math.isclose(got[i, k].item(), math.exp(dot / T), rel_tol=1e-4)


def test_memory_initialisation_is_uniform_and_seeded() -> None:
    bound = 1 / math.sqrt(DIM / 3)
    mem = memory(seed=3)
    for bank in (mem.student_memory, mem.teacher_memory):
        assert bank.shape == (N_SAMPLES, DIM) and bank.dtype == torch.float32
        assert bank.abs().max() <= bound and bank.abs().max() > 0.8 * bound
    assert not torch.equal(mem.student_memory, mem.teacher_memory)
    assert torch.equal(memory(seed=3).student_memory, mem.student_memory)
    assert mem.z_student.item() == -1 and mem.z_teacher.item() == -1


def test_scores_and_loss_against_a_naive_computation() -> None:
    mem = memory()
    indices = torch.tensor([4, 17, 0])
    negatives = torch.tensor([[1, 2, 3, 5, 6, 7, 8, 9]] * 3)
    s = unit(3, 10).requires_grad_(True)
    t = unit(3, 11).requires_grad_(True)
    s_scores, t_scores = mem.score(indices, s, t, negatives=negatives)
    assert s_scores.shape == t_scores.shape == (3, K + 1)

    def raw(anchor, bank):
        out = torch.zeros(3, K + 1)
        for i in range(3):
            rows = [int(indices[i])] + negatives[i].tolist()
            for k, r in enumerate(rows):
                out[i, k] = math.exp(sum(bank[r, d] * anchor[i, d] for d in range(DIM)) / T)
        return out

    s_raw = raw(s.detach(), mem.teacher_memory)  # the student's anchor, the teacher's memory
    t_raw = raw(t.detach(), mem.student_memory)
    z_s, z_t = s_raw.mean() * N_SAMPLES, t_raw.mean() * N_SAMPLES
    assert math.isclose(mem.z_student.item(), z_s.item(), rel_tol=1e-5)
    assert math.isclose(mem.z_teacher.item(), z_t.item(), rel_tol=1e-5)
    assert torch.allclose(s_scores, s_raw / z_s, rtol=1e-4)
    assert torch.allclose(t_scores, t_raw / z_t, rtol=1e-4)
    loss = crd_nce_loss(s_scores, N_SAMPLES) + crd_nce_loss(t_scores, N_SAMPLES)
    want = naive_nce(s_raw / z_s, N_SAMPLES) + naive_nce(t_raw / z_t, N_SAMPLES)
    assert torch.allclose(loss.double(), want, rtol=1e-4)
    loss.backward()  # both heads train: gradients reach both embeddings, not the memories
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert not mem.student_memory.requires_grad and not mem.teacher_memory.requires_grad
    # Z is estimated once: a second batch is divided by the same constants.
    again, _ = mem.score(indices, unit(3, 12), t.detach(), negatives=negatives)
    assert math.isclose(mem.z_student.item(), z_s.item(), rel_tol=1e-5)
    assert torch.allclose(again, raw(unit(3, 12), mem.teacher_memory) / z_s, rtol=1e-4)


def test_update_formula() -> None:
    mem = memory()
    before_s, before_t = mem.student_memory.clone(), mem.teacher_memory.clone()
    indices = torch.tensor([3, 40])
    s, t = unit(2, 20), unit(2, 21)
    mem.update(indices, s, t)
    for bank, old, emb in ((mem.student_memory, before_s, s), (mem.teacher_memory, before_t, t)):
        for row, i in enumerate(indices.tolist()):
            mixed = [0.5 * old[i, d] + 0.5 * emb[row, d] for d in range(DIM)]
            norm = math.sqrt(sum(v * v for v in mixed))
            for d in range(DIM):
                assert math.isclose(bank[i, d].item(), mixed[d] / norm, rel_tol=1e-5, abs_tol=1e-7)
        untouched = [i for i in range(N_SAMPLES) if i not in indices.tolist()]
        assert torch.equal(bank[untouched], old[untouched])
    mem.update(indices, s, t)  # momentum pulls the row towards the embedding
    assert (mem.student_memory[3] - s[0]).norm() < (before_s[3] / before_s[3].norm() - s[0]).norm()


def test_buffers_are_saved_and_restored() -> None:
    mem = memory(seed=1)
    indices, negatives = torch.tensor([1, 2]), torch.randint(0, N_SAMPLES, (2, K))
    s, t = unit(2, 30), unit(2, 31)
    mem.score(indices, s, t, negatives=negatives)
    mem.update(indices, s, t)
    state = mem.state_dict()
    assert set(state) == {"student_memory", "teacher_memory", "z_student", "z_teacher"}
    fresh = memory(seed=2)
    fresh.load_state_dict(state)
    for key in state:
        assert torch.equal(getattr(fresh, key), state[key])
    got = fresh.score(indices, s, t, negatives=negatives)  # restored Z: no re-estimation
    want = mem.score(indices, s, t, negatives=negatives)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_negatives_are_uniform_over_the_others_and_reproducible() -> None:
    mem = memory(num_negatives=500)
    indices = torch.tensor([0, 25, 49])
    draws = mem.sample_negatives(indices, torch.Generator().manual_seed(7))
    assert draws.shape == (3, 500) and draws.dtype == torch.int64
    for row, i in enumerate(indices.tolist()):
        values = set(draws[row].tolist())
        assert i not in values and values == set(range(N_SAMPLES)) - {i}
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(mem.sample_negatives(indices, generator), draws)
    saved = generator.get_state()  # a resumed run restores the generator's state ...
    next_draws = mem.sample_negatives(indices, generator)
    generator.set_state(saved)  # ... and draws the same negatives again
    assert torch.equal(mem.sample_negatives(indices, generator), next_draws)
    assert not torch.equal(next_draws, draws)
    other = mem.sample_negatives(indices, torch.Generator().manual_seed(8))
    assert not torch.equal(other, draws)


def test_score_with_a_generator_is_deterministic() -> None:
    s, t, indices = unit(4, 40), unit(4, 41), torch.tensor([5, 6, 7, 8])
    a = memory().score(indices, s, t, generator=torch.Generator().manual_seed(3))
    b = memory().score(indices, s, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_embed_head() -> None:
    torch.manual_seed(0)
    head = Embed(12, DIM)
    out = head(torch.randn(5, 3, 2, 2))
    assert out.shape == (5, DIM)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-6)


def test_float32_under_bf16_autocast() -> None:
    mem = memory()
    s = unit(3, 50).bfloat16().requires_grad_(True)
    t = unit(3, 51).bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_scores, t_scores = mem.score(torch.tensor([0, 1, 2]), s, t, generator=torch.Generator())
        loss = crd_nce_loss(s_scores, N_SAMPLES) + crd_nce_loss(t_scores, N_SAMPLES)
    assert s_scores.dtype == t_scores.dtype == loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(s.grad.float()).all() and torch.isfinite(t.grad.float()).all()


def test_bad_arguments() -> None:
    mem = memory()
    s, t, idx = unit(2, 60), unit(2, 61), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"scores must be \[N, K \+ 1\] .* shape \(3, 1\)"):
        crd_nce_loss(torch.rand(3, 1), N_SAMPLES)
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got 0"):
        crd_nce_loss(torch.rand(3, 4), 0)
    with pytest.raises(ValueError, match=r"candidates \[N, K \+ 1, D\]"):
        contrast_scores(s, torch.rand(2, DIM))
    with pytest.raises(ValueError, match="temperature must be a finite .* than 0, got 0"):
        ContrastMemory(N_SAMPLES, DIM, K, temperature=0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1"):
        ContrastMemory(N_SAMPLES, DIM, K, momentum=1)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 2, got 1"):
        ContrastMemory(1, DIM, K)
    with pytest.raises(ValueError, match="num_negatives must be an integer >= 1, got 0"):
        ContrastMemory(N_SAMPLES, DIM, 0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 49\] .* got 50"):
        mem.score(torch.tensor([0, 50]), s, t)
    with pytest.raises(ValueError, match=r"negatives must lie in \[0, 49\] .* got -1"):
        mem.score(idx, s, t, negatives=torch.full((2, K), -1))
    with pytest.raises(ValueError, match=r"negatives must be \[N, K\] = \[2, K\]"):
        mem.score(idx, s, t, negatives=torch.zeros(3, K, dtype=torch.long))
    with pytest.raises(ValueError, match=r"student_emb must be \[N, dim\] = \[2, 4\], got .*3"):
        mem.score(idx, torch.rand(2, 3), t)
    with pytest.raises(ValueError, match=r"teacher_emb must be \[N, dim\] = \[2, 4\]"):
        mem.update(idx, s, torch.rand(3, DIM))
    with pytest.raises(ValueError, match=r"indices must be \[N\]"):
        mem.update(idx[:, None], s, t)
    with pytest.raises(ValueError, match="integer tensor of sample indices, got torch.float32"):
        mem.update(idx.float(), s, t)
    with pytest.raises(ValueError, match="distinct, got index 1 more than once"):
        mem.update(torch.tensor([1, 1]), s, t)
