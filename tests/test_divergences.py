"""divergence (dense and top-k teachers) against the formulas written out independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.losses.divergences import DIVERGENCES, divergence
from distill.losses.kd import kd_loss
from distill.losses.sparse import TopK, log_rest, topk_from_logits

BETA, SKEW = 0.3, 0.2  # asymmetric, so a swapped weight or mixture shows


def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_c a_c (log a_c - log b_c), skipping a_c = 0; float64 probabilities."""
    return sum(a[c] * (torch.log(a[c]) - torch.log(b[c])) for c in range(len(a)) if a[c] > 0)


FORMULAS = {
    "forward_kl": lambda p, q, beta, alpha: kl(p, q),
    "reverse_kl": lambda p, q, beta, alpha: kl(q, p),
    "jsd": lambda p, q, beta, alpha: (
        beta * kl(p, beta * p + (1 - beta) * q) + (1 - beta) * kl(q, beta * p + (1 - beta) * q)
    ),
    "skew_forward_kl": lambda p, q, beta, alpha: kl(p, alpha * p + (1 - alpha) * q),
    "skew_reverse_kl": lambda p, q, beta, alpha: kl(q, alpha * q + (1 - alpha) * p),
    "tvd": lambda p, q, beta, alpha: 0.5 * sum(abs(p[c] - q[c]) for c in range(len(p))),
}


def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max())
    return e / e.sum()


def reference(s, t, kind, T, beta=BETA, alpha=SKEW, mask=None, dim=-1) -> torch.Tensor:
    """The kind's formula on each position's probabilities, averaged over the kept positions."""
    s2 = s.movedim(dim, -1).double().reshape(-1, s.shape[dim])
    t2 = t.movedim(dim, -1).double().reshape(-1, t.shape[dim])
    keep = [True] * len(s2) if mask is None else mask.reshape(-1).tolist()
    values = [
        FORMULAS[kind](softmax(t2[i] / T), softmax(s2[i] / T), beta, alpha)
        for i in range(len(s2))
        if keep[i]
    ]
    return sum(values) / len(values)


def logits_for(layout: str, seed: int):
    """(student, teacher, mask, dim) for one layout."""
    g = torch.Generator().manual_seed(seed)
    if layout == "flat":
        return torch.randn(5, 7, generator=g), 2 * torch.randn(5, 7, generator=g), None, -1
    if layout == "sequence_masked":
        s, t = torch.randn(2, 3, 6, generator=g), 2 * torch.randn(2, 3, 6, generator=g)
        return s, t, torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool), -1
    # classes along dim 1 of [N, V, L]
    return torch.randn(2, 6, 3, generator=g), 2 * torch.randn(2, 6, 3, generator=g), None, 1


def value_and_grad(kind, s, t, **kw):
    s = s.clone().requires_grad_(True)
    loss = divergence(s, t, kind, **kw)
    loss.backward()
    return loss, s.grad


@pytest.mark.parametrize("layout", ["flat", "sequence_masked", "classes_dim1"])
@pytest.mark.parametrize("T", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_each_kind_matches_its_formula(kind: str, T: float, layout: str) -> None:
    s, t, mask, dim = logits_for(layout, seed=len(kind) + int(4 * T))
    got, grad = value_and_grad(kind, s, t, temperature=T, beta=BETA, skew=SKEW, dim=dim, mask=mask)
    s64 = s.double().requires_grad_(True)
    want = reference(s64, t, kind, T, mask=mask, dim=dim)
    want.backward()
    assert got.dtype == torch.float32 and got.dim() == 0
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    if mask is not None:
        assert torch.all(grad.movedim(dim, -1)[~mask] == 0)


def test_defaults_are_beta_half_and_skew_one_tenth() -> None:
    s, t, _, _ = logits_for("flat", seed=7)
    for kind in ("jsd", "skew_forward_kl", "skew_reverse_kl"):
        want = reference(s, t, kind, 1.0, beta=0.5, alpha=0.1)
        assert torch.allclose(divergence(s, t, kind).double(), want, rtol=1e-5)


def test_beta_ends_are_forward_and_reverse_kl() -> None:
    s, t, _, _ = logits_for("flat", seed=8)
    forward = divergence(s, t, "forward_kl", temperature=2.0)
    reverse = divergence(s, t, "reverse_kl", temperature=2.0)
    assert torch.allclose(forward.double(), reference(s, t, "forward_kl", 2.0), rtol=1e-5)
    assert torch.allclose(reverse.double(), reference(s, t, "reverse_kl", 2.0), rtol=1e-5)
    assert not torch.allclose(forward, reverse, rtol=1e-2)  # the ends can be told apart
    assert torch.equal(divergence(s, t, "jsd", beta=0.0, temperature=2.0), forward)
    assert torch.equal(divergence(s, t, "jsd", beta=1.0, temperature=2.0), reverse)
    # Just inside the ends the formula holds: ~beta * KL(p||q), ~(1 - beta) * KL(q||p).
    near_0 = divergence(s, t, "jsd", beta=1e-4, temperature=2.0)
    near_1 = divergence(s, t, "jsd", beta=1 - 1e-4, temperature=2.0)
    assert torch.allclose(near_0, 1e-4 * forward, rtol=2e-2)
    assert torch.allclose(near_1, 1e-4 * reverse, rtol=2e-2)
    for beta, got in ((1e-4, near_0), (1 - 1e-4, near_1)):
        want = reference(s, t, "jsd", 2.0, beta=beta)
        assert torch.allclose(got.double(), want, rtol=1e-2)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0])
def test_forward_kl_times_t_squared_is_kd_loss(T: float) -> None:
    s, t, mask, _ = logits_for("sequence_masked", seed=9)
    ours, our_grad = value_and_grad("forward_kl", s, t, temperature=T, mask=mask)
    s_kd = s.clone().requires_grad_(True)
    theirs = kd_loss(s_kd, t, T, mask=mask)
    theirs.backward()
    assert torch.allclose(ours * T**2, theirs, rtol=1e-5, atol=1e-7)
    assert torch.allclose(our_grad * T**2, s_kd.grad, rtol=1e-5, atol=1e-8)
    s1, t1, _, _ = logits_for("classes_dim1", seed=9)
    assert torch.allclose(
        divergence(s1, t1, "forward_kl", temperature=T, dim=1) * T**2,
        kd_loss(s1, t1, T, dim=1),
        rtol=1e-5,
    )


def trl_style_generalised_jsd(s, t, labels, beta, T=1.0):
    """TRL's generalised JSD as REFERENCES.md describes it, written out here: log-space mixture
    m = beta*p + (1-beta)*q, beta*KL(p||m) + (1-beta)*KL(q||m) (forward KL(p||q) at beta = 0,
    reverse KL(q||p) at beta = 1), summed over the vocabulary, mean over labels != -100."""
    log_q = F.log_softmax(s / T, dim=-1)
    log_p = F.log_softmax(t / T, dim=-1)
    if beta == 0:
        per_class = F.kl_div(log_q, log_p, reduction="none", log_target=True)
    elif beta == 1:
        per_class = F.kl_div(log_p, log_q, reduction="none", log_target=True)
    else:
        weights = torch.tensor([math.log(beta), math.log(1 - beta)]).view(2, 1, 1, 1)
        log_m = torch.logsumexp(torch.stack([log_p, log_q]) + weights, dim=0)
        kl_p = F.kl_div(log_m, log_p, reduction="none", log_target=True)  # KL(p || m)
        kl_q = F.kl_div(log_m, log_q, reduction="none", log_target=True)  # KL(q || m)
        per_class = beta * kl_p + (1 - beta) * kl_q
    keep = labels != -100
    return per_class[keep].sum() / keep.sum()


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_jsd_matches_trl_style_formula(beta: float) -> None:
    torch.manual_seed(10)
    s, t = torch.randn(2, 5, 11), 3 * torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = -100  # a prompt
    labels[1, 4] = -100  # padding
    ours, our_grad = value_and_grad("jsd", s, t, beta=beta, temperature=0.9, mask=labels != -100)
    s_peer = s.clone().requires_grad_(True)
    peer = trl_style_generalised_jsd(s_peer, t, labels, beta, T=0.9)
    peer.backward()
    assert torch.allclose(ours, peer, rtol=1e-5, atol=1e-7)
    assert torch.allclose(our_grad, s_peer.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_bf16_near_one_hot_teacher_at_large_vocabulary(kind: str) -> None:
    torch.manual_seed(11)
    V = 32_000
    hot = torch.tensor([5, 17, 31_999, 0])
    teacher = (30 * F.one_hot(hot, V) + torch.randn(4, V)).bfloat16()
    students = {
        "random": (3 * torch.randn(4, V)).bfloat16(),
        "confidently_wrong": (30 * F.one_hot(hot.flip(0), V) + torch.randn(4, V)).bfloat16(),
        "equal": teacher.clone(),
    }
    for name, student in students.items():
        s = student.requires_grad_(True)
        loss = divergence(s, teacher, kind, temperature=0.5)
        loss.backward()
        assert loss.dtype == torch.float32, name
        assert torch.isfinite(loss) and loss >= 0, (name, loss)
        assert torch.isfinite(s.grad.float()).all(), name
        if name == "equal":
            assert loss < 1e-4, (name, loss)
        else:
            assert s.grad.float().abs().sum() > 0, name


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_fp16_inputs(kind: str) -> None:
    torch.manual_seed(12)
    s, t = torch.randn(4, 9).half().requires_grad_(True), (2 * torch.randn(4, 9)).half()
    loss = divergence(s, t, kind, temperature=0.5, beta=BETA, skew=SKEW)
    assert loss.dtype == torch.float32
    s64 = s.detach().double().requires_grad_(True)
    want = reference(s64, t, kind, 0.5)
    want.backward()
    assert torch.allclose(loss.double(), want, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert s.grad.dtype == torch.float16 and torch.isfinite(s.grad).all()
    assert torch.allclose(s.grad.double(), s64.grad, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_float32_under_bf16_autocast(kind: str) -> None:
    torch.manual_seed(13)
    s = torch.randn(3, 4, 8).bfloat16().requires_grad_(True)
    t = torch.randn(3, 4, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = divergence(s, t, kind, temperature=2.0, beta=BETA, skew=SKEW)
    assert loss.dtype == torch.float32
    want = reference(s.detach(), t, kind, 2.0)
    assert torch.allclose(loss.double(), want, rtol=1e-5, atol=1e-7)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_zero_for_equal_logits_and_no_gradient_into_teacher(kind: str) -> None:
    x = torch.randn(6, 10)
    assert divergence(x, x.clone(), kind, temperature=0.5).item() < 1e-6
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    divergence(s, t, kind).backward()
    assert t.grad is None and s.grad is not None


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_never_negative_under_rounding(kind: str) -> None:
    """A student a rounding error away from the teacher: float32 sums can fall below 0."""
    torch.manual_seed(18)
    t = torch.randn(16, 1000)
    s = t + 1e-6 * torch.randn(16, 1000)
    rows = [divergence(s[i : i + 1], t[i : i + 1], kind).item() for i in range(16)]
    assert min(rows) >= 0.0 and divergence(s, t, kind).item() >= 0.0
    assert max(rows) < 1e-6


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_shared_minus_inf_classes_are_left_out(kind: str) -> None:
    """-inf at the same classes of both (a padded vocabulary): as if those classes were absent."""
    torch.manual_seed(14)
    s, t = torch.randn(3, 8), 2 * torch.randn(3, 8)
    padded = torch.tensor([False, False, True, False, False, False, True, True])
    s_inf = s.masked_fill(padded, -math.inf)
    t_inf = t.masked_fill(padded, -math.inf)
    got, grad = value_and_grad(kind, s_inf, t_inf, temperature=0.5)
    want, want_grad = value_and_grad(kind, s[:, ~padded], t[:, ~padded], temperature=0.5)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert torch.isfinite(grad).all() and torch.all(grad[:, padded] == 0)
    assert torch.allclose(grad[:, ~padded], want_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_minus_inf_on_one_side_only(kind: str) -> None:
    torch.manual_seed(15)
    s, t = torch.randn(3, 6), torch.randn(3, 6)
    banned = torch.zeros(6, dtype=torch.bool)
    banned[2] = True
    # Teacher gives class 2 probability 0, the student does not: only KL(q || p) is infinite.
    loss, grad = value_and_grad(kind, s, t.masked_fill(banned, -math.inf), beta=BETA, skew=SKEW)
    if kind == "reverse_kl":
        assert loss.item() == math.inf
    else:
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        want = reference(s, t.masked_fill(banned, -math.inf), kind, 1.0)
        assert torch.allclose(loss.double(), want, rtol=1e-5)
    # The student gives class 2 probability 0: KL(p || q) is infinite, its gradient finite.
    loss, grad = value_and_grad(kind, s.masked_fill(banned, -math.inf), t, beta=BETA, skew=SKEW)
    assert torch.isfinite(grad).all()
    if kind == "forward_kl":
        assert loss.item() == math.inf
    else:
        assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_underflowing_probabilities(kind: str) -> None:
    """Teacher probabilities that are exactly 0 in float32 with finite logits."""
    torch.manual_seed(16)
    t = 2000 * F.one_hot(torch.tensor([1, 3, 0]), 5).float()
    s = torch.randn(3, 5)
    loss, grad = value_and_grad(kind, s, t, temperature=0.5, beta=BETA, skew=SKEW)
    assert torch.isfinite(loss) and loss >= 0 and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_masked_out_positions_with_inf_or_nan_teacher(kind: str) -> None:
    torch.manual_seed(17)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool)
    broken = t.clone()
    broken[0, 1, :2] = -math.inf
    broken[1, 2] = math.nan
    got, grad = value_and_grad(kind, s, broken, mask=mask)
    want, want_grad = value_and_grad(kind, s, t, mask=mask)
    assert torch.allclose(got, want) and torch.equal(grad, want_grad)
    assert torch.all(grad[~mask] == 0)
    # An all-false mask gives 0, not NaN.
    assert divergence(s, t, kind, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_bad_arguments() -> None:
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    for beta in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=rf"beta must be in \[0, 1\], got {beta}"):
            divergence(s, t, "jsd", beta=beta)
    for skew in (-1e-3, 2.0, math.nan):
        with pytest.raises(ValueError, match=rf"skew must be in \[0, 1\], got {skew}"):
            divergence(s, t, "skew_forward_kl", skew=skew)
    for temperature in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=rf"temperature must be .* got {temperature}"):
            divergence(s, t, "tvd", temperature=temperature)
    with pytest.raises(ValueError, match=r"must have the same shape, got .* and \(2, 4\)"):
        divergence(s, torch.randn(2, 4), "forward_kl")
    with pytest.raises(ValueError, match="did you mean 'reverse_kl'"):
        divergence(s, t, "reverse-kl")
    with pytest.raises(ValueError, match=r"kind must be one of forward_kl, .*'kl'"):
        divergence(s, t, "kl")
    with pytest.raises(ValueError, match="mask shape"):
        divergence(torch.randn(2, 3, 4), torch.randn(2, 3, 4), "jsd", mask=torch.ones(2, 4))


# ---- top-k (sparse) teachers ---------------------------------------------------------------


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_with_whole_vocabulary_equals_dense(kind: str) -> None:
    torch.manual_seed(20)
    s, t = torch.randn(2, 4, 9), 3 * torch.randn(2, 4, 9)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    kw = dict(temperature=0.5, beta=BETA, skew=SKEW, mask=mask)
    store = topk_from_logits(t, 9, temperature=0.5)
    assert torch.all(store.rest == -math.inf)
    dense, dense_grad = value_and_grad(kind, s, t, **kw)
    sparse, sparse_grad = value_and_grad(kind, s, store, **kw)
    assert torch.isfinite(sparse) and torch.isfinite(sparse_grad).all()
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-5)
    assert torch.allclose(sparse_grad, dense_grad, rtol=1e-5, atol=1e-5)
    # A store whose rest holds rounding noise at k = V reads the same.
    noisy = store._replace(rest=torch.full_like(store.rest, -30.0))
    assert torch.allclose(divergence(s, noisy, kind, **kw), dense, rtol=1e-5, atol=1e-5)


def naive_bucket_reference(s, store: TopK, kind, T, mask=None) -> torch.Tensor:
    """The kind's formula on k + 1 buckets, written out position by position in float64."""
    s2 = s.double().reshape(-1, s.shape[-1])
    ids = store.ids.reshape(-1, store.ids.shape[-1])
    logprobs = store.logprobs.double().reshape(-1, ids.shape[-1])
    rest = store.rest.double().reshape(-1)
    keep = [True] * len(s2) if mask is None else mask.reshape(-1).tolist()
    values = []
    for i in range(len(s2)):
        if not keep[i]:
            continue
        q = softmax(s2[i] / T)
        q_ids = torch.stack([q[j] for j in ids[i].tolist()])
        q_rest = sum(q[c] for c in range(len(q)) if c not in ids[i].tolist())
        p_buckets = torch.cat([logprobs[i].exp(), rest[i].exp().view(1)])
        q_buckets = torch.cat([q_ids, q_rest.view(1)])
        values.append(FORMULAS[kind](p_buckets, q_buckets, BETA, SKEW))
    return sum(values) / len(values)


@pytest.mark.parametrize("T", [0.5, 2.0])
@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_matches_naive_bucket_formula(kind: str, T: float) -> None:
    torch.manual_seed(21)
    s, t = torch.randn(2, 3, 12), 2 * torch.randn(2, 3, 12)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    store = topk_from_logits(t, 4, temperature=T)
    got, grad = value_and_grad(kind, s, store, temperature=T, beta=BETA, skew=SKEW, mask=mask)
    s64 = s.double().requires_grad_(True)
    want = naive_bucket_reference(s64, store, kind, T, mask)
    want.backward()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grad.double(), s64.grad, rtol=1e-4, atol=1e-7)
    # Every kind is an f-divergence, so merging classes into buckets can only lower it.
    dense = divergence(s, t, kind, temperature=T, beta=BETA, skew=SKEW, mask=mask)
    assert got <= dense + 1e-6


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_confident_student(kind: str) -> None:
    """The student's rest mass (~1e-16) is below float32's resolution of 1 - sum(q_ids)."""
    torch.manual_seed(26)
    t = torch.randn(3, 12)
    store = topk_from_logits(t, 4)
    s = torch.randn(3, 12) + 40 * F.one_hot(store.ids[:, 0], 12)
    got, grad = value_and_grad(kind, s, store, beta=BETA, skew=SKEW)
    s64 = s.double().requires_grad_(True)
    want = naive_bucket_reference(s64, store, kind, 1.0)
    want.backward()
    assert torch.isfinite(got) and torch.isfinite(grad).all()
    assert torch.allclose(got.double(), want, rtol=1e-5)
    assert torch.allclose(grad.double(), s64.grad, rtol=1e-4, atol=1e-7)


def test_topk_from_logits() -> None:
    torch.manual_seed(22)
    t = 2 * torch.randn(3, 10)
    store = topk_from_logits(t, 3, temperature=2.0)
    log_p = torch.log_softmax(t.double() / 2.0, dim=-1)
    want_values, want_ids = log_p.sort(dim=-1, descending=True)
    assert store.ids.dtype == torch.long and torch.equal(store.ids, want_ids[:, :3])
    assert store.logprobs.dtype == torch.float32
    assert torch.allclose(store.logprobs.double(), want_values[:, :3], atol=1e-6)
    want_rest = torch.log(1 - want_values[:, :3].exp().sum(-1))
    assert torch.allclose(store.rest.double(), want_rest, atol=1e-6)
    # Classes along dim 1 of [N, V, L] give the same store, moved.
    moved = topk_from_logits(t.view(3, 10, 1), 3, temperature=2.0, dim=1)
    assert torch.equal(moved.ids.squeeze(-1), store.ids)
    assert moved.rest.shape == (3, 1)
    for k in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=rf"k must be an integer in \[1, 10\].*got {k}"):
            topk_from_logits(t, k)
    with pytest.raises(ValueError, match="temperature"):
        topk_from_logits(t, 3, temperature=0.0)


def test_rest_mass_is_exact_when_tiny() -> None:
    """log(1 - sum) would round the leftover mass of a confident model to log 0 in float32."""
    logits = torch.tensor([[60.0, 0.0, 0.0, 0.0]])
    log_q = torch.log_softmax(logits, dim=-1)
    got = log_rest(log_q, torch.tensor([[0]]), dim=-1)
    want = math.log(3) - 60 - math.log1p(3 * math.exp(-60))
    assert abs(got.item() - want) < 1e-4
    assert torch.log1p(-log_q[:, 0].exp()).item() == -math.inf  # what the naive form gives


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_teacher_with_no_mass_left(kind: str) -> None:
    """A teacher with exactly zero mass outside its top k (rest = -inf)."""
    torch.manual_seed(23)
    s = torch.randn(4, 10)
    t = torch.randn(4, 10)
    t[:, 3:] = -math.inf
    store = topk_from_logits(t, 3)
    assert torch.all(store.rest == -math.inf)
    loss, grad = value_and_grad(kind, s, store, beta=BETA, skew=SKEW)
    if kind == "reverse_kl":  # the student's rest mass where the teacher has none
        assert loss.item() == math.inf
        return
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    dense, dense_grad = value_and_grad(kind, s, t, beta=BETA, skew=SKEW)
    if kind == "forward_kl":  # nothing of the teacher's is in the rest: nothing is lost
        assert torch.allclose(loss, dense, rtol=1e-5) and torch.allclose(grad, dense_grad)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_topk_with_classes_neither_side_can_emit(kind: str) -> None:
    """-inf in both outside the top k (a padded vocabulary): both rests are empty buckets."""
    torch.manual_seed(25)
    s, t = torch.randn(4, 10), torch.randn(4, 10)
    s[:, 3:] = -math.inf
    t[:, 3:] = -math.inf
    store = topk_from_logits(t, 3, temperature=0.5)
    loss, grad = value_and_grad(kind, s, store, temperature=0.5, beta=BETA, skew=SKEW)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    dense, dense_grad = value_and_grad(kind, s, t, temperature=0.5, beta=BETA, skew=SKEW)
    assert torch.allclose(loss, dense, rtol=1e-5) and torch.allclose(grad, dense_grad, atol=1e-7)


def test_topk_classes_dim_other_than_last_and_compact_store() -> None:
    torch.manual_seed(24)
    s, t = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    store = topk_from_logits(t, 5, temperature=2.0)
    want = divergence(s, store, "jsd", temperature=2.0)
    moved = TopK(store.ids.transpose(1, 2), store.logprobs.transpose(1, 2), store.rest)
    got = divergence(s.transpose(1, 2), moved, "jsd", temperature=2.0, dim=1)
    assert torch.allclose(got, want, rtol=1e-6)
    # int32 ids and bf16 log-probabilities, as a compact store may keep them.
    compact = TopK(store.ids.int(), store.logprobs.bfloat16(), store.rest.bfloat16())
    assert torch.allclose(divergence(s, compact, "jsd", temperature=2.0), want, rtol=2e-2)


def test_no_gradient_into_topk_teacher() -> None:
    s = torch.randn(3, 6, requires_grad=True)
    store = topk_from_logits(torch.randn(3, 6), 2)
    logprobs = store.logprobs.clone().requires_grad_(True)
    rest = store.rest.clone().requires_grad_(True)
    divergence(s, TopK(store.ids, logprobs, rest), "reverse_kl").backward()
    assert logprobs.grad is None and rest.grad is None and s.grad is not None


def test_bad_topk_teacher() -> None:
    s = torch.randn(2, 3, 8)
    store = topk_from_logits(torch.randn(2, 3, 8), 4)
    cases = {
        "integer class ids": store._replace(ids=store.ids.float()),
        r"teacher.ids must have the student logits' shape .*\[2, 3, 'k'\]": store._replace(
            ids=store.ids[:1], logprobs=store.logprobs[:1]
        ),
        "teacher.ids must have as many dimensions": store._replace(ids=store.ids[0]),
        r"teacher.logprobs must have the shape of teacher.ids": store._replace(
            logprobs=store.logprobs[..., :3]
        ),
        r"teacher.rest must have .* \(2, 3\); got \(2,\)": store._replace(rest=store.rest[:, 0]),
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            divergence(s, bad, "forward_kl")
    too_many = topk_from_logits(torch.randn(2, 3, 9), 9)
    with pytest.raises(ValueError, match=r"k <= 8 classes"):
        divergence(s, too_many, "forward_kl")
