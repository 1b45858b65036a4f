"""The stateful parts of contrastive representation distillation (CRD, Tian et al. 2020).

- :class:`Embed`: the trainable head that maps a network's features to the contrast space
  (linear, then L2 normalisation). A CRD method owns two, one per network; the teacher's head is
  trained too.
- :class:`ContrastMemory`: one memory bank per network, holding an embedding for every training
  sample, which supplies the negatives; its state (both banks and the normalisation constants)
  lives in buffers, so checkpoints carry it.

The loss itself is in :mod:`distill.losses.crd`. A method's step::

    s = embed_s(student_features); t = embed_t(teacher_features)
    s_scores, t_scores = memory.score(batch["index"], s, t, generator=g)
    loss = crd_nce_loss(s_scores, memory.num_samples) + crd_nce_loss(t_scores, memory.num_samples)
    memory.update(batch["index"], s, t)   # after scoring, as the reference does
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_temperature
from .losses.crd import contrast_scores


class Embed(nn.Module):
    """Linear projection to the contrast space, then L2 normalisation of each row.

    ``[N, ...]`` inputs are flattened to ``[N, dim_in]`` first (the references take the pooled
    ``[N, C]`` features). The reference divides by the norm without a floor; we use
    ``F.normalize`` (floor 1e-12), the same for any non-zero row.
    """

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(features.reshape(features.shape[0], -1)), dim=1)


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class ContrastMemory(nn.Module):
    r"""Memory banks of student and teacher embeddings, and the NCE scores against them.

    Buffers (all in ``state_dict``, so checkpoints restore them):

    - ``student_memory``, ``teacher_memory``: ``[num_samples, dim]``. Initialised as the
      reference does: every entry uniform in :math:`[-a, a]` with :math:`a = 1/\sqrt{dim/3}`,
      so each row has expected squared norm 1 but is not normalised until its sample is first
      seen by :meth:`update`.
    - ``z_student``, ``z_teacher``: the normalisation constants Z of the two directions,
      ``-1`` until the first :meth:`score` estimates them (the reference keeps them in its
      ``params`` buffer and estimates them once, from its first batch, in the same way).

    Negatives: the reference's CIFAR-100 loader draws, for each sample, K indices uniformly
    from the samples of the *other classes* (without replacement when K is smaller than that
    pool); when no indices are given, its memory draws K + 1 indices uniformly from all samples
    (an alias sampler over uniform weights) and puts the positive first. We draw K indices
    uniformly from all samples *but the positive*, with replacement, from an explicit
    ``torch.Generator`` so that a resumed run can reproduce the draws; a method that wants the
    class-aware draw passes its own ``negatives`` to :meth:`score`.

    Args:
        num_samples: the number of training samples ``n`` (rows of each bank), ≥ 2.
        dim: the embedding width (128).
        num_negatives: K (16,384).
        temperature: the NCE temperature T (0.07).
        momentum: the bank update's momentum m in [0, 1) (0.5).
        generator: optional CPU generator for the initial banks.
    """

    def __init__(
        self,
        num_samples: int,
        dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        *,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.num_samples = _positive_int("num_samples", num_samples, minimum=2)
        self.dim = _positive_int("dim", dim)
        self.num_negatives = _positive_int("num_negatives", num_negatives)
        self.temperature = check_temperature(temperature)
        if not (0.0 <= float(momentum) < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        bound = 1.0 / math.sqrt(dim / 3.0)
        for name in ("student_memory", "teacher_memory"):
            bank = torch.rand(self.num_samples, self.dim, generator=generator) * 2 * bound - bound
            self.register_buffer(name, bank)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, dim={self.dim}, num_negatives={self.num_negatives}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )

    def _check_indices(self, indices: torch.Tensor, name: str = "indices") -> list[int]:
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(
                f"{name} must be an integer tensor of sample indices, got {indices.dtype}"
            )
        values = indices.reshape(-1).tolist()  # one transfer, then checks in Python
        bad = [v for v in values if not 0 <= v < self.num_samples]
        if bad:
            raise ValueError(
                f"{name} must lie in [0, {self.num_samples - 1}] (the memory's num_samples), "
                f"got {bad[0]}"
            )
        return values

    def _check_embeddings(self, indices: torch.Tensor, *embeddings: torch.Tensor) -> None:
        if indices.dim() != 1:
            raise ValueError(
                "indices must be [N] (the batch's sample indices), got shape "
                f"{tuple(indices.shape)}"
            )
        for name, emb in zip(("student_emb", "teacher_emb"), embeddings, strict=True):
            if tuple(emb.shape) != (indices.shape[0], self.dim):
                raise ValueError(
                    f"{name} must be [N, dim] = [{indices.shape[0]}, {self.dim}], got shape "
                    f"{tuple(emb.shape)}"
                )

    def sample_negatives(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """K negatives per sample, uniform over all indices but the sample's own.

        Draws with replacement on ``generator``'s device (the default generator of the memory's
        device when ``None``), then moves them to the memory's device.

        Returns:
            ``[N, K]`` int64 indices.
        """
        device = generator.device if generator is not None else self.student_memory.device
        shape = (indices.shape[0], self.num_negatives)
        draws = torch.randint(
            0, self.num_samples - 1, shape, generator=generator, device=device
        ).to(self.student_memory.device)
        positives = indices.to(self.student_memory.device, torch.long).unsqueeze(1)
        return draws + (draws >= positives).long()  # skip the positive: n - 1 equal choices

    def score(
        self,
        indices: torch.Tensor,
        student_emb: torch.Tensor,
        teacher_emb: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        negatives: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Normalised NCE scores of the positive and K negatives, both directions.

        With ``idx_i = [i, j_1..j_K]`` (the sample, then its negatives), memories
        :math:`M^s, M^t` and embeddings :math:`s_i, t_i`:

        .. math::
            P^s_{ik} = \frac{\exp(\langle M^t_{idx_{ik}}, s_i \rangle / T)}{Z^s}, \qquad
            P^t_{ik} = \frac{\exp(\langle M^s_{idx_{ik}}, t_i \rangle / T)}{Z^t}

        (the student's embedding against the teacher's memory, and the other way round). On
        the first call each Z is set, as in the reference, to the mean of that call's
        unnormalised scores times ``num_samples`` (a Monte-Carlo estimate of the partition
        function), and kept afterwards. The memories are read detached; gradients flow into
        both embeddings (both heads train).

        Args:
            indices: ``[N]`` the batch's sample indices (``batch["index"]``), the positives.
            student_emb: ``[N, dim]`` the student's L2-normalised embedding.
            teacher_emb: ``[N, dim]`` the teacher's.
            generator: drives :meth:`sample_negatives` when ``negatives`` is not given.
            negatives: optional ``[N, K']`` indices to use instead of drawing them.

        Returns:
            ``(student_scores, teacher_scores)``: two ``[N, 1 + K]`` float32 tensors, column 0
            the positive; feed each to :func:`distill.losses.crd.crd_nce_loss`.
        """
        self._check_embeddings(indices, student_emb, teacher_emb)
        self._check_indices(indices)
        if negatives is None:
            negatives = self.sample_negatives(indices, generator)
        else:
            if negatives.dim() != 2 or negatives.shape[0] != indices.shape[0]:
                raise ValueError(
                    f"negatives must be [N, K] = [{indices.shape[0]}, K], got shape "
                    f"{tuple(negatives.shape)}"
                )
            self._check_indices(negatives, "negatives")
        device = self.student_memory.device
        idx = torch.cat([indices.to(device, torch.long).unsqueeze(1), negatives.to(device)], 1)
        with torch.autocast(device_type=device.type, enabled=False):
            teacher_rows = self.teacher_memory[idx].detach().float()
            student_rows = self.student_memory[idx].detach().float()
            s_raw = contrast_scores(student_emb, teacher_rows, self.temperature)
            t_raw = contrast_scores(teacher_emb, student_rows, self.temperature)
            with torch.no_grad():  # set once, without a host sync: where(z < 0, estimate, z)
                for z, raw in ((self.z_student, s_raw), (self.z_teacher, t_raw)):
                    z.copy_(torch.where(z < 0, raw.mean() * self.num_samples, z))
            return s_raw / self.z_student, t_raw / self.z_teacher

    @torch.no_grad()
    def update(
        self, indices: torch.Tensor, student_emb: torch.Tensor, teacher_emb: torch.Tensor
    ) -> None:
        r"""Move each sample's memory rows towards its new embeddings, then re-normalise.

        .. math::
            M_i \leftarrow \frac{m M_i + (1 - m) v_i}{\| m M_i + (1 - m) v_i \|_2}

        for both banks (student embeddings into ``student_memory``, teacher's into
        ``teacher_memory``). Call it after :meth:`score` in a step. The embeddings are read
        detached. Indices must be distinct (the write order of repeated rows is undefined on
        GPUs).
        """
        self._check_embeddings(indices, student_emb, teacher_emb)
        values = self._check_indices(indices)
        seen: set[int] = set()
        for value in values:
            if value in seen:
                raise ValueError(
                    f"indices passed to update must be distinct, got index {value} more than once"
                )
            seen.add(value)
        idx = indices.to(self.student_memory.device, torch.long)
        for bank, emb in ((self.student_memory, student_emb), (self.teacher_memory, teacher_emb)):
            rows = bank[idx].float() * self.momentum + emb.detach().float() * (1 - self.momentum)
            bank.index_copy_(0, idx, F.normalize(rows, dim=1).to(bank.dtype))
