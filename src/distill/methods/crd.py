"""Contrastive representation distillation (CRD; Tian, Krishnan and Isola, ICLR 2020).

Both networks' penultimate features are embedded (a trainable linear head and L2
normalisation each, :class:`~distill.memory.Embed`), and the embeddings learn to tell the
positive pair (one sample seen by both networks) from K negatives (other samples, whose
embeddings come from a memory bank, :class:`~distill.memory.ContrastMemory`); see
:mod:`distill.losses.crd`::

    crd = CRD(teacher, student, x[:8], train_size=len(train_set))
    out = crd({"inputs": x, "targets": y, "index": i})   # parts: {"ce", "crd_s", "crd_t"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import Field
from torch import nn

from ..checks import LossWeight, Temperature, check_nonnegative
from ..errors import ConfigError
from ..losses.crd import crd_nce_loss
from ..memory import ContrastMemory, Embed
from ..seeding import derive_seed
from ..tasks import Batch, Task
from ..teachers import Teacher
from ._embeddings import PENULTIMATE, EmbeddingDistiller, EmbeddingFields
from .base import DemoEntry, OnePhaseSpec, Output, StageContext


def _world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor concatenated over the processes along dim 0, in rank order; the processes'
    sizes along dim 0 may differ (a last, shorter batch)."""
    world = _world_size()
    device = tensors[0].device
    size = torch.tensor([tensors[0].shape[0]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)]))
    return gathered


class CRD(EmbeddingDistiller):
    r"""CRD: cross-entropy plus β times the NCE losses of both contrast directions.

    .. math::
        \mathcal{L} = \mathrm{CE}(s, y)
            + \beta\,\big(\mathcal{L}_{\mathrm{NCE}}(g_s(f^s), M^t)
                          + \mathcal{L}_{\mathrm{NCE}}(g_t(f^t), M^s)\big)

    :math:`g_s, g_t` are the embedding heads (:class:`~distill.memory.Embed`, trained with the
    student; the teacher's head trains too, the teacher does not), :math:`f` the penultimate
    features (``head.flatten`` of a zoo model), :math:`M^s, M^t` the memory banks of student
    and teacher embeddings, one row per training sample, and
    :math:`\mathcal{L}_{\mathrm{NCE}}` the reference's NCE loss with the positive (the
    sample's own row) and K negatives drawn from the bank
    (:func:`~distill.losses.crd.crd_nce_loss`). After scoring, in training mode only, the
    batch's rows of both banks move towards the new embeddings with momentum m.

    Defaults are RepDistiller's CIFAR-100 ones: β = 0.8 with CE weight 1 (``--distill crd
    -a 0 -b 0.8``), embedding dim 128, K = 16,384 negatives, NCE temperature 0.07,
    momentum 0.5.

    **Negatives** are drawn uniformly from all training samples but the positive, with
    replacement (RepDistiller's CIFAR-100 loader instead draws from the other classes only;
    that needs every sample's label). The draws come from a generator seeded from ``seed``,
    a count of training steps kept in the buffer ``draws`` and the process's rank, so they do
    not touch the global RNG and a run resumed from a checkpoint draws exactly what an
    uninterrupted one does. The noise constant of the NCE loss is K/n: keep K near a third
    of the training set, as on CIFAR-100 (16,384 of 50,000), when the set is small.

    **Several processes:** the memory (buffers only) is never wrapped for data parallelism;
    each process scores its own batch, then the indices and embeddings of all processes are
    gathered and every process applies the same update (repeated indices, from a sampler
    that pads the last batches, are updated once), and the normalisation constants Z,
    estimated from the first batch, are averaged over the processes, so all copies of the
    memory stay identical.

    Parts: ``ce``, ``crd_s`` (β × the student-anchored NCE loss, against the teacher's bank)
    and ``crd_t`` (β × the teacher-anchored one, against the student's bank). Batches must
    carry ``index`` (the sample's position in the training set).

    Args:
        teacher: a :class:`~distill.teachers.Teacher` or any trained module (frozen).
        student: the module to train.
        sample_batch: a batch (a dict, or an input tensor for image classification); one
            probe forward checks the layers and sizes the embedding heads.
        train_size: the number of training samples n (rows of each bank; indices lie in
            ``[0, n)``).
        beta: weight of the two NCE losses, ≥ 0.
        dim: the embedding width (128).
        num_negatives: K (16,384).
        nce_temperature: the NCE temperature (0.07).
        momentum: the banks' update momentum in [0, 1) (0.5).
        student_layer, teacher_layer: the layers whose outputs are embedded.
        seed: seeds the negatives' draws (a recipe's seed).
        task: how the models are called on a batch (default ``classification``).
    """

    def __init__(
        self,
        teacher: nn.Module | Teacher,
        student: nn.Module,
        sample_batch: Batch | torch.Tensor,
        train_size: int,
        beta: float = 0.8,
        *,
        dim: int = 128,
        num_negatives: int = 16384,
        nce_temperature: float = 0.07,
        momentum: float = 0.5,
        student_layer: str = PENULTIMATE,
        teacher_layer: str = PENULTIMATE,
        seed: int = 0,
        task: str | Task = "classification",
    ) -> None:
        if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 2:
            raise ConfigError(
                "CRD keeps one memory row per training sample and needs the training set's "
                f"size: train_size must be an integer >= 2, got {train_size!r}"
            )
        super().__init__(
            teacher,
            student,
            student_layer=student_layer,
            teacher_layer=teacher_layer,
            sample_batch=sample_batch,
            task=task,
        )
        self.beta = check_nonnegative(beta, "beta")
        assert self.student_probe is not None and self.teacher_probe is not None
        self.embed_s = Embed(self.student_probe[0].numel(), dim)
        self.embed_t = Embed(self.teacher_probe[0].numel(), dim)
        self.memory = ContrastMemory(train_size, dim, num_negatives, nce_temperature, momentum)
        self.seed = int(seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    def _generator(self) -> torch.Generator:
        """This step's generator of negatives (see the class docstring)."""
        device = self.memory.student_memory.device
        rank = dist.get_rank() if _world_size() > 1 else 0
        seed = derive_seed(self.seed, "crd-negatives", int(self.draws), rank)
        return torch.Generator(device=device).manual_seed(seed)

    def forward(self, batch: Batch) -> Output:
        index = batch.get("index") if isinstance(batch, Mapping) else None
        if not isinstance(index, torch.Tensor):
            raise ConfigError(
                "CRD needs each batch's sample indices, batch['index'] (positions in the "
                "training set, for its memory bank); the library's data loaders add them, "
                "a batch of your own must carry them"
            )
        index = index.reshape(-1)
        logits, features_s, features_t = self.embeddings(batch)
        emb_s, emb_t = self.embed_s(features_s), self.embed_t(features_t)
        world = _world_size()
        first = world > 1 and bool(self.memory.z_student < 0)
        scores_s, scores_t = self.memory.score(index, emb_s, emb_t, generator=self._generator())
        if first:  # one estimate of Z for every process: the mean of theirs
            rescaled = []
            for name, scores in (("z_student", scores_s), ("z_teacher", scores_t)):
                local = getattr(self.memory, name)
                mean = local.clone()
                dist.all_reduce(mean)
                mean /= world
                # A new buffer tensor: the graph holds the local one, which must not change.
                setattr(self.memory, name, mean)
                rescaled.append(scores * (local / mean))
            scores_s, scores_t = rescaled
        n = self.memory.num_samples
        parts = {
            "ce": self.task.supervised_loss(logits, batch),
            "crd_s": self.beta * crd_nce_loss(scores_s, n),
            "crd_t": self.beta * crd_nce_loss(scores_t, n),
        }
        if self.training:
            self._update(index, emb_s.detach(), emb_t.detach())
        return Output.from_parts(parts, logits)

    @torch.no_grad()
    def _update(self, index: torch.Tensor, emb_s: torch.Tensor, emb_t: torch.Tensor) -> None:
        """Move the batch's memory rows (every process's batch) and count the step."""
        index = index.to(emb_s.device)
        if _world_size() > 1:
            index, emb_s, emb_t = _all_gather([index, emb_s, emb_t])
        first_row: dict[int, int] = {}
        for row, value in enumerate(index.tolist()):
            first_row.setdefault(value, row)
        keep = list(first_row.values())
        if len(keep) < index.shape[0]:
            rows = torch.tensor(keep, device=index.device)
            index, emb_s, emb_t = index[rows], emb_s[rows], emb_t[rows]
        self.memory.update(index, emb_s, emb_t)
        self.draws += 1


class CRDStage(OnePhaseSpec, EmbeddingFields):
    """``{method: crd, teacher, student, beta: 0.8, dim: 128, num_negatives: 16384,
    nce_temperature: 0.07, momentum: 0.5, student_layer: head.flatten, teacher_layer:
    head.flatten}``: one phase, ``crd``, whose memory has a row per training sample."""

    method: Literal["crd"] = "crd"
    beta: LossWeight = 0.8
    dim: int = Field(128, ge=1)
    num_negatives: int = Field(16384, ge=1)
    nce_temperature: Temperature = 0.07
    momentum: float = Field(0.5, ge=0, lt=1)

    # The demo trains on ~1,400 digits: K near a third of them, as on CIFAR-100.
    demo = DemoEntry(
        student="student_crd",
        stage={
            "method": "crd",
            "teacher": "teacher",
            "student": "student_crd",
            "num_negatives": 512,
        },
    )

    def distiller(self, ctx: StageContext) -> CRD:
        """The CRD Distiller on ``ctx``'s models."""
        if "index" not in ctx.sample_batch:
            raise ConfigError(
                "the training batches carry no 'index' (each sample's position in the "
                "training set), which CRD's memory needs"
            )
        return CRD(
            ctx.teacher(self.teacher),
            ctx.models[self.student],
            ctx.sample_batch,
            ctx.train_size,
            self.beta,
            dim=self.dim,
            num_negatives=self.num_negatives,
            nce_temperature=self.nce_temperature,
            momentum=self.momentum,
            student_layer=self.student_layer,
            teacher_layer=self.teacher_layer,
            seed=ctx.seed,
            task=ctx.task,
        )
