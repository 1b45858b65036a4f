"""The training loop: epochs of optimizer steps over dict batches, for any method and task.

A step reads like Lightning's: a batch in, ``out = method(batch)``, backward, optimizer step.
The loop never unpacks a batch and knows no method or task by name: the task counts the
positions a batch's losses apply to (samples, or labelled tokens), so that the mean of a step
is taken over all of them, across gradient-accumulation micro-batches and processes.

Reproducibility: every epoch reseeds all RNGs from ``(seed, epoch)`` and the data order is a
permutation drawn from the same pair, so a run resumed from an epoch checkpoint follows exactly
the path of an uninterrupted one (on CPU; GPU kernels may add their own nondeterminism).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data.batches import (
    Collate,
    EpochSampler,
    accumulation_groups,
    channels_last,
    train_loader,
)
from ..errors import DistillError
from ..methods.base import Distiller, Output, Progress, check_one_after_another
from ..precision import autocast, autocast_each, check_device
from ..seeding import derive_seed, seed_everything
from ..tasks import Task, get_task
from .checkpoint import EpochCheckpoints, rng_state, set_rng_state
from .distributed import check_processes, get_accelerator, parallel, sum_over_processes
from .evaluate import RunningMeans, epoch_line, eval_loader, evaluate
from .optim import Optimizers
from .signals import NonFiniteGuard, StopSignals


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns: one record per epoch, the wall time, and where the
    models were (:attr:`DataParallel.placement <distill.training.DataParallel.placement>`)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    placement: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def final_val(self) -> dict[str, dict[str, float]]:
        return self.history[-1]["val"] if self.history else {}


class Trainer:
    """Trains a :class:`~distill.methods.Distiller` for one phase.

    Args:
        config: epochs, optimizer, schedule, precision, accumulation, clipping.
        task: the task of the method's models (its name or a :class:`~distill.tasks.Task`).
        batch_size: per-process batch size.
        seed: the phase's seed (data order and RNG of each epoch derive from it).
        checkpoint_dir: where the epoch checkpoints go (``None``: no checkpoints).
        on_epoch_end: called with each epoch's record after its checkpoint is on disk.
        on_resume: called with the records of the epochs a resumed phase had finished.
        progress: show a tqdm bar per epoch (main process only).
        desc: the bar's label.
        device: ``auto``, ``cpu`` or ``cuda``.
        eval_batch_size: batch size for validation (default: 2 × ``batch_size``).
        num_workers: DataLoader worker processes.
        keep_checkpoints: how many epoch checkpoints to keep.
        collate: turns a list of dict items into a batch (default: stacking them).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        task: str | Task = "classification",
        batch_size: int = 128,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        on_resume: Callable[[list[dict[str, Any]]], None] | None = None,
        progress: bool = True,
        desc: str = "train",
        device: str = "auto",
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        keep_checkpoints: int = 2,
        collate: Collate | None = None,
    ) -> None:
        self.config = config
        self.task = get_task(task)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.seed = seed
        self.on_epoch_end, self.on_resume = on_epoch_end, on_resume
        self.progress = progress
        self.desc = desc
        self.num_workers = num_workers
        self.collate = collate or default_collate
        self.accelerator = get_accelerator(device)
        self.checkpoints = EpochCheckpoints(
            checkpoint_dir,
            keep=keep_checkpoints,
            writer=self.accelerator.is_main_process,
            warn=tqdm.write,
        )
        check_device(config.precision, self.accelerator.device)
        check_processes(config, self.accelerator)

    def fit(
        self,
        method: Distiller,
        train_data: Dataset,
        val_data: Dataset | None,
        eval_models: dict[str, nn.Module],
        *,
        resume: bool = False,
    ) -> FitResult:
        """Train ``method`` for ``config.epochs`` epochs, evaluating ``eval_models`` on
        ``val_data`` after each. With ``resume=True`` it continues from the newest epoch
        checkpoint (and returns at once if that one is the last).

        While it runs, the trainer holds the run's ``method``, ``train_data``, ``parallel``
        (:func:`~.distributed.parallel`), ``optim`` (:class:`Optimizers`) and ``result``."""
        cfg, acc = self.config, self.accelerator
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise DistillError("the training set is empty")
        self.sampler = EpochSampler(len(train_data), self.seed)  # type: ignore[arg-type]
        self.loader = acc.prepare_data_loader(
            train_loader(
                train_data, self.sampler, self.batch_size, self.collate, self.num_workers,
                pin_memory=acc.device.type == "cuda",
            )
        )
        self.batches = len(self.loader)
        self.steps_per_epoch = math.ceil(self.batches / cfg.grad_accum_steps)
        size, collate = self.eval_batch_size, self.collate
        val_loader = None if val_data is None else eval_loader(val_data, size, collate)
        self.method, self.train_data, self.result = method, train_data, FitResult()
        start, partial = 0, None
        state = self.checkpoints.latest(self.desc) if resume else None
        if state is not None:
            method.load_trainable_state_dict(state["method"])
            method.progress = Progress(**state["progress"])
            start = int(state["epoch"])
            self.result = FitResult(list(state["history"]), float(state["seconds"]))
            partial = state if state.get("batches_done") else None
            if self.on_resume is not None:
                self.on_resume(self.result.history)
        self.parallel = parallel(method, acc, cfg, self.desc)  # devices, wrappers or shards
        with self.parallel, StopSignals() as stop:  # optimizers take the parameters then
            groups = method.optimizer_groups()
            self.optim = Optimizers(groups, cfg, self.steps_per_epoch, acc.device)
            self.guard = NonFiniteGuard(cfg, self.optim.zero_grad, self.desc, acc)
            if state is not None:
                self.parallel.load_optimizer_state(self.optim, state)
                set_rng_state(state["rng"])
            self.result.placement = self.parallel.placement
            for epoch in range(start, cfg.epochs):
                record = self._epoch(epoch, partial, stop)
                partial = None
                for name, model in eval_models.items() if val_loader is not None else ():
                    record["val"][name] = evaluate(
                        self.parallel.live(model), val_loader, self.task, accelerator=acc,
                        precision=cfg.precision,
                    )
                self.guard.check_epoch(method, record)
                self.result.seconds += record["seconds"]
                self.result.history.append(record)
                self._save(epoch + 1)
                self._report(record)
                stop.raise_if_received(f"{self.desc} after epoch {epoch + 1}")  # the last too
        return self.result

    def _epoch(
        self, epoch: int, partial: dict[str, Any] | None, stop: StopSignals
    ) -> dict[str, Any]:
        """Train one epoch (the rest of it, after ``partial``'s batches); return its record."""
        cfg, acc, method = self.config, self.accelerator, self.method
        seed_everything(derive_seed(self.seed, "epoch", epoch))
        done, means, carried = 0, RunningMeans(), 0.0
        if partial is not None:  # continue an interrupted epoch after the batches it trained
            done, carried = int(partial["batches_done"]), float(partial["partial_seconds"])
            means = RunningMeans(partial["partial_sums"], float(partial["partial_seen"]))
            set_rng_state(partial["rng"])
        self.sampler.skip = done * self.batch_size * acc.num_processes
        # Through the prepared loader: it re-applies its own epoch counter on every iter().
        for target in (self.loader, self.sampler, self.train_data):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        method.train()
        started = time.perf_counter() - carried
        bar = tqdm(
            total=self.batches,
            initial=done,
            desc=f"{self.desc} {epoch + 1}/{cfg.epochs}",
            disable=not (self.progress and acc.is_main_process),
            leave=False,
            dynamic_ncols=True,
        )
        self.optim.zero_grad()
        for group in accumulation_groups(self.loader, cfg.grad_accum_steps):
            step = epoch * self.steps_per_epoch + done // cfg.grad_accum_steps
            method.progress = Progress(epoch, step, cfg.epochs, self.steps_per_epoch)
            for count, outputs in self._step(group, epoch, done):
                means.add(count, outputs)
            done += len(group)
            bar.update(len(group))
            rate = means.seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(means.shown() | {f"{self.task.unit}/s": f"{rate:.0f}"})
            if stop.received is not None and done < self.batches:
                bar.close()
                self._save(
                    epoch,
                    done,
                    batches_done=done,
                    partial_sums=means.sums,
                    partial_seen=means.seen,
                    partial_seconds=time.perf_counter() - started,
                )
                stop.raise_if_received(f"{self.desc} at epoch {epoch + 1}, step {done}")
        self.sampler.skip = 0
        bar.close()
        method.epoch_end()
        return {
            "epoch": epoch + 1,
            "train": means.means(acc),
            "val": {},
            "seconds": round(time.perf_counter() - started, 3),
            "lr": self.optim.lr,
        }

    def _step(self, group: list[Any], epoch: int, index: int) -> list[tuple[float, list[Output]]]:
        """One optimizer step on a group of micro-batches. Each micro-batch's loss (a mean over
        its positions) is weighted by its share of the step's positions, so the gradient is
        that of the mean over every position of the step, on every process. Returns, per
        micro-batch, its position count and its finite outputs."""
        cfg, acc, method, optim = self.config, self.accelerator, self.method, self.optim
        counts = [self.task.count(batch).to(acc.device, torch.float64) for batch in group]
        total = sum_over_processes(torch.stack(counts).sum(), acc)
        done, joint = [], True
        for batch, count in zip(group, counts, strict=True):
            batch = channels_last(batch) if cfg.channels_last else batch
            with autocast(acc.device, cfg.precision):
                sequence = method.step_losses(batch)
            outputs = []
            if sequence is None:
                with autocast(acc.device, cfg.precision):
                    out = method(batch)
                if self.guard.ok(out, epoch, index):
                    optim.backward(out.loss * (count * acc.num_processes / total).float())
                    outputs.append(out)
            else:  # the method updates its models one after another
                joint = False
                check_one_after_another(cfg.grad_accum_steps)
                for name, out in autocast_each(sequence, acc.device, cfg.precision):
                    if self.guard.ok(out, epoch, index):
                        optim.backward(out.loss)
                        optim.step([name])
                        outputs.append(out)
            if outputs:
                done.append((float(count), outputs))
        if joint:
            optim.step()
        return done

    def _save(self, epoch: int, step: int | None = None, **partial: Any) -> None:
        """Checkpoint after ``epoch`` epochs (and ``step`` batches of the next one, with the
        ``partial`` sums of that epoch)."""
        weights, optim = self.parallel.trainable_state(), self.parallel.optimizer_state(self.optim)
        state = {"method": weights, **optim, "rng": rng_state(), "epoch": epoch}
        state["progress"] = dataclasses.asdict(self.method.progress)
        state.update(history=self.result.history, seconds=self.result.seconds, **partial)
        self.checkpoints.save(state, epoch, step)

    def _report(self, record: dict[str, Any]) -> None:
        """Hand an epoch's record on, and print its line."""
        if self.on_epoch_end is not None:
            self.on_epoch_end(record)
        if self.progress and self.accelerator.is_main_process:
            tqdm.write(epoch_line(self.desc, record, self.task, self.config.epochs))
