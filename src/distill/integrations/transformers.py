r"""Distillation in a Hugging Face ``transformers.Trainer``.

:class:`DistillationTrainer` trains the student of any :class:`~distill.methods.Distiller`
with everything the Trainer already does (optimizer and schedule, mixed precision, gradient
accumulation, data parallelism, checkpoints, callbacks and reporting)::

    method = distill.KD(teacher, student, temperature=2.0, alpha=0.5, task="causal_lm")
    trainer = DistillationTrainer(method, args=TrainingArguments("out"), train_dataset=train,
                                  data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    trainer.train()
    trainer.save_model("student")     # the student only; from_pretrained("student") loads it

The batches that the Trainer's collators make (``input_ids``, ``attention_mask``, ``labels``
with −100 where no loss applies) are the batches of distill's ``causal_lm`` task, so they go to
the method as they are.

- **The Trainer's model is the student.** Only the student is prepared by Accelerate (device,
  data-parallel wrapping, mixed precision), optimised, and written by ``save_model`` and in
  checkpoints. The teacher is moved to the device and nothing more: it never enters the
  optimizer, a wrapper or a checkpoint.
- **Modules the method trains besides the student** (a FitNets regressor, say) join the
  optimizer as a group of their own, are written to each checkpoint folder as
  ``distill_method.safetensors`` and are restored by ``train(resume_from_checkpoint=...)``.
  Such methods run on one process.
- **Per-token normalisation under gradient accumulation.** A method's loss on a micro-batch is
  a mean over its ``n_i`` labelled tokens. One optimizer step of ``k`` micro-batches on ``P``
  processes must follow the mean over all ``N = Σ n_i`` tokens of the step:

  .. math::
      \mathcal{L}_\text{step} = \sum_{i=1}^{kP} \frac{n_i}{N}\,\mathcal{L}_i

  so micro-batch ``i`` returns ``L_i · n_i · P / N`` (``P`` undoes the mean over processes that
  data parallelism takes), and the Trainer adds the micro-batches up without dividing by ``k``
  (``loss_is_scaled_for_ga``). ``N`` (the Trainer's ``num_items_in_batch``) is counted by the
  method's task over the step's micro-batches on every process, whatever the student.
- **Loss parts** (``ce``, ``kd``, ``hint``...) are logged through the Trainer's own ``log``,
  beside ``loss``: token-weighted means since the previous log, and ``eval_<part>`` after an
  evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..methods.base import Distiller
from ..teachers import Teacher

try:
    import transformers
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "distill.integrations.transformers needs the transformers package: "
        "pip install transformers"
    ) from exc

__all__ = ["METHOD_STATE", "DistillationTrainer", "PartMeans"]

METHOD_STATE = "distill_method.safetensors"
"""File name, in a checkpoint folder, of the weights the method trains besides the student."""


class PartMeans:
    """Token-weighted means of loss parts, accumulated between two logs.

    ``add(parts, count)`` adds one micro-batch's parts (means over its ``count`` positions);
    ``pop(accelerator)`` returns ``{name: Σ part·count / Σ count}`` over every process and
    starts again.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | None = None

    def add(self, parts: dict[str, torch.Tensor], count: torch.Tensor) -> None:
        count = count.detach().double()
        for name, value in parts.items():
            weighted = value.detach().double() * count
            self.sums[name] = self.sums[name] + weighted if name in self.sums else weighted
        self.count = count if self.count is None else self.count + count

    def pop(self, accelerator: Any) -> dict[str, float]:
        if not self.sums or self.count is None:
            return {}
        names = sorted(self.sums)
        values = torch.stack([self.sums[name] for name in names] + [self.count])
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values.to(accelerator.device), reduction="sum")
        self.sums, self.count = {}, None
        means = values[:-1] / values[-1].clamp_min(1.0)
        return dict(zip(names, means.tolist(), strict=True))


class DistillationTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose loss is a distill method's.

    Args:
        method: any :class:`~distill.methods.Distiller` that makes one joint update per step
            (KD, FitNets' hint phase, ...), built with the task of the data (``causal_lm`` for
            the Trainer's language-model collators).
        args: the ``transformers.TrainingArguments``.
        model: the module of ``method`` that the Trainer trains and saves; default
            ``method.student``.
        **kwargs: any other ``transformers.Trainer`` argument (``train_dataset``,
            ``eval_dataset``, ``data_collator``, ``callbacks``, ...), except ``model``'s
            and ``compute_loss_func`` (the method is the loss).

    Raises:
        TypeError: ``method`` is not a Distiller.
        ValueError: a method that updates its models one after another (``step_losses``:
            DML), a ``model`` that is not a trained module of ``method``, or a method with
            trainable modules besides the student on several processes.
    """

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        method: Distiller,
        args: transformers.TrainingArguments | None = None,
        *,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, Distiller):
            raise TypeError(
                "method must be a distill Distiller, e.g. distill.KD(teacher, student, "
                f"task='causal_lm'); got {type(method).__name__}"
            )
        if type(method).step_losses is not Distiller.step_losses:
            raise ValueError(
                f"{type(method).__name__} updates its models one after another within a step "
                "(step_losses); a Trainer makes one joint update per step. Train it with "
                "distill.training.Trainer or a recipe"
            )
        if "compute_loss_func" in kwargs:
            raise ValueError("compute_loss_func: the method computes the loss; leave it out")
        model = model if model is not None else getattr(method, "student", None)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"{type(method).__name__} has no .student; pass model=, the module of the "
                "method that the Trainer trains and saves"
            )
        frozen = {id(m) for teacher in method.teachers() for m in teacher.modules()}
        if id(model) in frozen or not any(m is model for m in method.modules()):
            raise ValueError(
                f"model ({type(model).__name__}) must be the module of the method that "
                "trains (its student), not a teacher nor a module outside the method"
            )
        super().__init__(model=model, args=args, **kwargs)
        self.method = method
        if not hasattr(transformers.Trainer, "loss_is_scaled_for_ga"):  # pragma: no cover
            # Older Trainers leave a loss undivided by the accumulation steps when the model
            # takes loss kwargs and num_items_in_batch is given, which it always is here.
            self.model_accepts_loss_kwargs = True
        # The method's own trainable modules: not the student, not a teacher.
        self.method_modules = {
            name: child
            for name, child in method.named_children()
            if not isinstance(child, Teacher) and not any(m is model for m in child.modules())
        }
        for child in method.children():
            if child is not model:
                child.to(self.args.device)
        if self.method_parameters() and self.accelerator.num_processes > 1:
            raise ValueError(
                f"{type(method).__name__} trains modules besides the student "
                f"({', '.join(self.method_modules)}); DistillationTrainer runs such methods on "
                "one process only"
            )
        if self.method_state_dict():
            self.add_callback(_SaveMethodState(self))
        # Where the student sits in the method, to put the Trainer's wrapper there for a step.
        self._slots = [
            (parent, name)
            for parent in method.modules()
            for name, child in parent.named_children()
            if child is model
        ]
        self._parts = {"train": PartMeans(), "eval": PartMeans()}

    # -- what the method trains besides the student ---------------------------------------

    def method_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the method's own modules (adapters, regressors)."""
        return [
            p
            for module in self.method_modules.values()
            for p in module.parameters()
            if p.requires_grad
        ]

    def method_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights and buffers of the method's own modules, by their names in the method."""
        return {
            f"{name}.{key}": value
            for name, module in self.method_modules.items()
            for key, value in module.state_dict().items()
        }

    def _save_method_state(self, folder: str) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.method_state_dict().items()}
        os.makedirs(folder, exist_ok=True)
        save_file(state, os.path.join(folder, METHOD_STATE))

    def _load_method_state(self, folder: str) -> None:
        from safetensors.torch import load_file

        path = os.path.join(folder, METHOD_STATE)
        if not os.path.isfile(path):
            raise ValueError(
                f"resume_from_checkpoint: {folder} has no {METHOD_STATE}, so the weights of "
                f"{', '.join(self.method_modules)} cannot be restored; resume from a checkpoint "
                "that DistillationTrainer wrote for this method"
            )
        state = load_file(path)
        for name, module in self.method_modules.items():
            prefix = f"{name}."
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        """The Trainer's optimizer over the student, plus a group for the method's own
        modules (with the Trainer's weight decay)."""
        given = self.optimizer is not None
        optimizer = super().create_optimizer(*args, **kwargs)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [p for p in self.method_parameters() if id(p) not in present]
        if missing and given:
            raise ValueError(
                "optimizers: the optimizer given leaves out the parameters of "
                f"{', '.join(self.method_modules)}, which the method trains; add them"
            )
        if missing:
            optimizer.add_param_group({"params": missing, "weight_decay": self.args.weight_decay})
        return optimizer

    def train(
        self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        """``transformers.Trainer.train``; resuming also restores the method's own modules."""
        self._parts["train"] = PartMeans()
        if resume_from_checkpoint and self.method_state_dict():
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            if isinstance(folder, str):
                self._load_method_state(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """``transformers.Trainer.evaluate``; the loss parts it logs are this evaluation's."""
        self._parts["eval"] = PartMeans()
        return super().evaluate(*args, **kwargs)

    # -- the loss --------------------------------------------------------------------------

    @contextmanager
    def _student_as(self, model: nn.Module) -> Iterator[None]:
        """The Trainer's (possibly wrapped) ``model`` in the student's place for the block, so
        that data parallelism sees the forward."""
        if model is self.model:
            yield
            return
        for parent, name in self._slots:
            setattr(parent, name, model)
        try:
            yield
        finally:
            for parent, name in self._slots:
                setattr(parent, name, self.model)

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, *args: Any, **kwargs: Any
    ) -> tuple[list[Any], torch.Tensor | None]:
        """The step's micro-batches, and ``num_items_in_batch``: the positions the method's
        task applies losses to (labelled tokens), over all of them and every process."""
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        if not batches:
            return batches, None
        task = self.method.task
        total = sum(task.count(batch).to(self.args.device) for batch in batches)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, reduction="sum")
        return batches, total

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """The method's loss on ``inputs``; in training, scaled by this micro-batch's share of
        the step's tokens (see the module's docstring)."""
        training = model.training
        self.method.train(training)  # the method's own modules; teachers stay in eval mode
        with self._student_as(model):
            out = self.method(inputs)
        count = self.method.task.count(inputs).to(out.loss.device)
        loss = out.loss
        if training and num_items_in_batch is not None:
            total = torch.as_tensor(num_items_in_batch, device=loss.device).double()
            share = count.double() * self.accelerator.num_processes / total.clamp_min(1)
            loss = loss * share.to(loss.dtype)
        elif training:  # no count for this step: the plain mean over micro-batches
            steps = getattr(self, "current_gradient_accumulation_steps", None)
            loss = loss / (steps or self.args.gradient_accumulation_steps)
        self._parts["train" if training else "eval"].add(out.parts, count)
        if return_outputs:
            return loss, {"loss": out.loss.detach(), "logits": out.logits}
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's ``log``, with the method's loss parts added: after training steps
        (logs with ``loss``) as ``{part}``, after an evaluation as ``eval_{part}``."""
        if any(key.startswith("eval_") for key in logs):
            for name, value in self._parts["eval"].pop(self.accelerator).items():
                logs.setdefault(f"eval_{name}", value)
        elif "loss" in logs:
            for name, value in self._parts["train"].pop(self.accelerator).items():
                logs.setdefault(name, value)
        super().log(logs, *args, **kwargs)


class _SaveMethodState(transformers.TrainerCallback):
    """Writes the method's own modules into each checkpoint folder the Trainer saves."""

    def __init__(self, trainer: DistillationTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.should_save:
            folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
            self.trainer._save_method_state(folder)
