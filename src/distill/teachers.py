"""The frozen teacher (DESIGN.md "Teacher").

A :class:`Teacher` wraps a trained model so that it can only teach: eval mode (always, even
when the method around it is put in train mode), ``requires_grad=False``, run under
``torch.no_grad()``, optionally under bf16/fp16 autocast, never in an optimizer and never
wrapped for data parallelism. Methods only ever call ``self.teacher(batch)`` (or
:meth:`Teacher.features` for intermediate layers); where its outputs come from — a forward
pass, or a store of outputs computed earlier — is the teacher's business::

    teacher = Teacher(model, "classification", precision="bf16")
    logits = teacher(batch)          # [N, C] float32, no graph

A teacher built on an offline store (``Teacher(None, task, store=TeacherStore(path))``) has no
model at all: ``teacher(batch)`` is the store's top-k for the batch, and an item the store
lacks is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from .data.batches import batch_device
from .errors import DataError
from .heads import check_output_layer, hidden_states, output_layer
from .losses.sparse import TopK
from .precision import DTYPES, autocast
from .taps import Taps
from .tasks import Task, get_task


class OutputStore(Protocol):
    """Where a teacher's outputs are kept between epochs (see :mod:`distill.cache`)."""

    def lookup(
        self, batch: Mapping[str, Any], compute: Callable[[Mapping[str, Any]], torch.Tensor]
    ) -> torch.Tensor | TopK:
        """The outputs for ``batch``: stored ones, and ``compute(sub_batch)`` for the samples
        not stored yet (which are then stored); an offline store answers every sample itself
        (as a :class:`~distill.losses.sparse.TopK`) and never calls ``compute``."""
        ...

    def flush(self) -> None:
        """Make what is stored durable (a no-op in memory)."""
        ...


class NoModel(nn.Module):
    """The model of a teacher that answers from an offline store only: running it is an
    error."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise DataError(
            "this teacher has no model: it answers from its offline store (teacher_logits) "
            "only, and the store does not hold what was asked for"
        )


def freeze(model: nn.Module) -> nn.Module:
    """Make ``model`` a teacher in place: eval mode and no parameter requires a gradient."""
    model.eval()
    model.requires_grad_(False)
    return model


class Teacher(nn.Module):
    """A frozen model that teaches.

    Args:
        module: the trained model (frozen in place: eval mode, ``requires_grad=False``), or
            ``None`` for a teacher that answers from an offline ``store`` only.
        task: the task (a :class:`~distill.tasks.Task` or its name), which says how the model
            is called on a batch and where its logits are.
        precision: ``fp32`` (the surrounding autocast, if any, applies), or ``bf16``/``fp16``
            to run the teacher, only, under that autocast. Outputs are float32 either way.
        store: optional :class:`OutputStore` (e.g. a :class:`~distill.cache.TeacherCache`);
            then the model runs only for samples whose outputs are not stored yet.
        renormalize: optional module applied to the images ``batch["inputs"]`` before the
            model sees them (its logits and its tapped features alike), e.g. a
            :class:`~distill.models.normalization.Renormalize` when the model expects another
            input normalisation than the data's. Tapped layer names stay the model's own.

    Attributes:
        calls: forward passes of the model so far (a store's hits do not count).
        in_step: set while the model is sharded over processes
            (:func:`distill.training.fsdp.shard_teacher`): its forward is then a collective
            call, which every process must make together. ``in_step(flag)`` tells whether any
            process has ``flag`` true; with a store, every process runs the model whenever
            one of them lacks outputs (those that lack none run it on one sample, unused).
    """

    def __init__(
        self,
        module: nn.Module | None,
        task: str | Task = "classification",
        precision: str = "fp32",
        store: OutputStore | None = None,
        renormalize: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if isinstance(module, Teacher):
            raise TypeError("module is already a Teacher; pass its .module or use it as is")
        if precision not in DTYPES:
            raise ValueError(
                f"teacher precision must be one of {', '.join(DTYPES)}; got {precision!r}"
            )
        if module is None and store is None:
            raise TypeError("a Teacher needs a module, or a store that answers for it")
        self.module = freeze(module if module is not None else NoModel())
        self.task = get_task(task)
        self.precision = precision
        self.store = store
        self.renormalize = renormalize
        self.calls = 0
        self.in_step: Callable[[bool], bool] | None = None
        self._head_checked = False

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode whatever ``mode`` is asked for."""
        return super().train(False)

    @property
    def has_model(self) -> bool:
        """Whether a model stands behind the teacher (not for one built on a store only)."""
        return not isinstance(self.module, NoModel)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor | TopK:
        """The teacher's logits on ``batch`` (float32, no graph), as the task defines them:
        ``[N, C]`` for classification, ``[N, L−1, V]`` for a causal LM; from an offline
        store, its :class:`~distill.losses.sparse.TopK` over those positions."""
        if self.store is None:
            return self.compute(batch)
        if self.in_step is None or not self.has_model:
            return self.store.lookup(batch, self.compute)
        agree, ran = self.in_step, False

        def compute(sub: Mapping[str, Any]) -> torch.Tensor:
            nonlocal ran
            ran = agree(True)
            return self.compute(sub)

        outputs = self.store.lookup(batch, compute)
        if not ran and agree(False):  # another process runs the model: take part
            self._run({k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return outputs

    def compute(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Run the model on ``batch`` (bypassing any store)."""
        self.calls += 1
        return self._run(batch)

    @torch.no_grad()
    def _run(self, batch: Mapping[str, Any]) -> torch.Tensor:
        batch = self._inputs(batch)
        with autocast(batch_device(batch), self.precision):
            return self.task.logits(self.module, batch).float()

    @torch.no_grad()
    def features(self, batch: Mapping[str, Any], layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of the named submodules on ``batch`` (no graph). The forward stops after the
        last of them, so later layers do not run."""
        args, kwargs = self.task.inputs(self._inputs(batch))
        self.calls += 1
        with autocast(batch_device(batch), self.precision), Taps(self.module, layers) as taps:
            return taps.run_until_captured(*args, **kwargs)

    @torch.no_grad()
    def hidden(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The model's last hidden states at the task's logits positions (``[N, L−1, H]``),
        without running its output layer (see :mod:`distill.heads`); :meth:`head` maps them to
        logits. Checked once against the model's own logits."""
        batch = self._inputs(batch)
        if not self._head_checked:
            check_output_layer(self.module, self.task, batch)
            self._head_checked = True
        self.calls += 1
        with autocast(batch_device(batch), self.precision):
            return hidden_states(self.module, self.task, batch)

    @torch.no_grad()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits (float32, no graph) of hidden states from :meth:`hidden`, e.g. of a chunk
        of its positions ``[T, H] -> [T, V]``."""
        with autocast(hidden.device, self.precision):
            return output_layer(self.module)(hidden).float()

    def _inputs(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """``batch`` with its images re-normalised for the model (itself when no need)."""
        if self.renormalize is None or "inputs" not in batch:
            return batch
        return {**batch, "inputs": self.renormalize(batch["inputs"])}

    def flush(self) -> None:
        """Make the store's contents durable (called at every epoch end)."""
        if self.store is not None:
            self.store.flush()


def as_teacher(model: nn.Module | Teacher, task: str | Task = "classification") -> Teacher:
    """``model`` itself when it is a :class:`Teacher`, else a new ``Teacher(model, task)``."""
    return model if isinstance(model, Teacher) else Teacher(model, task)
