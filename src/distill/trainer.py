"""The training loop, on Hugging Face Accelerate.

The trainer runs one :class:`~distill.methods.Phase`: it builds the optimizer and schedule,
iterates over the data, evaluates the trained models every epoch and writes a crash-safe
checkpoint at each epoch end. It knows nothing about which method it runs: it only calls
``method(inputs, targets).loss``.

Reproducibility: every epoch reseeds all RNGs from ``(seed, epoch)`` and the data order is a
permutation drawn from the same pair, so a run resumed from an epoch checkpoint follows exactly
the path of an uninterrupted one (on CPU; GPU kernels may add their own nondeterminism).
"""

from __future__ import annotations

import hashlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .checkpoint import atomic_save, rng_state, safe_load, set_rng_state
from .config import OptimizerConfig, ScheduleConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DistillError
from .methods.base import Distiller, Output, logits_of

EPOCH_FORMAT = "distill-epoch/1"


class NonFiniteLossError(DistillError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(Exception):  # noqa: N818 - reads as what happened
    """Training stopped on SIGINT or SIGTERM after writing a resumable checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only ask training to stop at the next step boundary
    (a second SIGINT interrupts at once). Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from any printable parts (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class EpochSampler(Sampler[int]):
    """A shuffled order of ``n`` indices that depends only on ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        # ``skip`` resumes an epoch that was interrupted after some batches.
        return iter(order[self.skip :])

    def __len__(self) -> int:
        return self.n - self.skip


_ACCELERATORS: dict[bool, Accelerator] = {}


def get_accelerator(device: str = "auto") -> Accelerator:
    """The process's Accelerator (one per process; ``device`` is ``auto``, ``cpu`` or
    ``cuda``)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be one of auto, cpu, cuda; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no CUDA GPU is available; use auto")
    # Accelerate sets up several CPU processes (gloo) only when asked for the CPU explicitly.
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu not in _ACCELERATORS:
        _ACCELERATORS[cpu] = Accelerator(cpu=cpu)
    return _ACCELERATORS[cpu]


# --- optimizers and schedules: one registry each ---------------------------------------------


def _sgd(params: list[nn.Parameter], c: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov
    )


def _adamw(params: list[nn.Parameter], c: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


def _adam(params: list[nn.Parameter], c: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)


OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], OptimizerConfig], torch.optim.Optimizer]] = {
    "sgd": _sgd,
    "adamw": _adamw,
    "adam": _adam,
}


def _cosine(progress: float, c: ScheduleConfig) -> float:
    return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _step(epoch: float, c: ScheduleConfig) -> float:
    if c.milestones:
        return c.gamma ** sum(1 for m in c.milestones if epoch >= m)
    return c.gamma ** int(epoch // c.step_size)


def lr_factor(c: ScheduleConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps (see :class:`ScheduleConfig`)."""
    total = max(1, steps_per_epoch * epochs)
    epoch = step / steps_per_epoch
    if c.name == "onecycle":
        warm = c.warmup_epochs * steps_per_epoch or 0.3 * total
        low = 1.0 / c.div_factor
        if step < warm:
            return low + (1 - low) * step / warm
        progress = min(1.0, (step - warm) / max(1.0, total - warm))
        final = low / c.final_div_factor
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))
    warm = c.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / (warm + 1)
    if c.name == "cosine":
        return _cosine(min(1.0, (step - warm) / max(1.0, total - warm)), c)
    if c.name == "step":
        return _step(epoch, c)
    return 1.0


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):  # noqa: ANN201 - a context manager
    """Autocast context for ``precision`` (``fp32`` gives a no-op)."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    batch_size: int = 256,
    accelerator: Accelerator | None = None,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1 accuracy (a fraction in [0, 1]) and mean cross-entropy of ``model`` on ``data``.

    Over several processes the predictions are gathered, so the numbers are those of the whole
    dataset, not of one shard.
    """
    accelerator = accelerator or get_accelerator()
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    loader = accelerator.prepare_data_loader(loader, device_placement=True)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = 0
    for inputs, targets in loader:
        with autocast(accelerator.device, precision):
            logits = logits_of(model(inputs)).float()
        losses = F.cross_entropy(logits, targets, reduction="none")
        hits = (logits.argmax(dim=-1) == targets).double()
        hits, losses = accelerator.gather_for_metrics((hits, losses.double()))
        correct += hits.sum()
        loss_sum += losses.sum()
        count += hits.numel()
    model.train(was_training)
    if count == 0:
        raise DistillError("cannot evaluate on an empty dataset")
    return {"accuracy": float(correct / count), "loss": float(loss_sum / count)}


def wrap_for_data_parallel(
    method: Distiller, accelerator: Accelerator, sync_batchnorm: bool = False
) -> list[tuple[nn.Module, str, nn.Module]]:
    """Wrap each trained model of ``method`` in DistributedDataParallel (several processes
    only). Teachers are never wrapped: they get no gradients, and a frozen module inside DDP
    is a known failure. Members of a ``ModuleDict``/``ModuleList`` (a cohort) are wrapped one
    by one. Returns ``(parent, attribute, original)`` triples for :func:`unwrap`."""
    if accelerator.num_processes == 1:
        return []
    from torch.nn.parallel import DistributedDataParallel

    teachers = set(method.teacher_names)
    wrapped = []
    for name, child in list(method.named_children()):
        if name in teachers:
            continue
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            targets = [(child, key, module) for key, module in child.named_children()]
        else:
            targets = [(method, name, child)]
        for parent, key, module in targets:
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if sync_batchnorm:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            device_ids = [accelerator.local_process_index] if module_on_cuda(module) else None
            # Some phases train part of a model (FitNets' hint phase): unused parameters are
            # expected, not an error.
            ddp = DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=True
            )
            setattr(parent, key, ddp)
            wrapped.append((parent, key, module))
    return wrapped


def module_on_cuda(module: nn.Module) -> bool:
    return any(p.is_cuda for p in module.parameters())


def unwrap(wrapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Put the original modules back in place of their DDP wrappers."""
    for parent, key, module in wrapped:
        setattr(parent, key, module)


class _Unwrapped:
    """Context: the original modules in place (for a checkpoint), the wrappers after."""

    def __init__(self, wrapped: list[tuple[nn.Module, str, nn.Module]]) -> None:
        self.wrapped = wrapped
        self.wrappers = [getattr(parent, key) for parent, key, _ in wrapped]

    def __enter__(self) -> None:
        unwrap(self.wrapped)

    def __exit__(self, *exc: object) -> None:
        for (parent, key, _), wrapper in zip(self.wrapped, self.wrappers, strict=True):
            setattr(parent, key, wrapper)


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns: one record per epoch, and the wall time."""

    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_val(self) -> dict[str, dict[str, float]]:
        return self.history[-1]["val"] if self.history else {}


class Trainer:
    """Trains a :class:`Distiller` for one phase.

    Args:
        config: epochs, optimizer, schedule, precision, accumulation, clipping.
        batch_size: per-process batch size.
        seed: the phase's seed (data order and RNG of each epoch derive from it).
        checkpoint_dir: where the epoch checkpoints go (``None``: no checkpoints).
        on_epoch_end: called with each epoch's record after its checkpoint is on disk.
        progress: show a tqdm bar per epoch (main process only).
        desc: the bar's label.
        device: ``auto``, ``cpu`` or ``cuda``.
        eval_batch_size: batch size for validation (default: 2 × ``batch_size``).
        num_workers: DataLoader worker processes.
        keep_checkpoints: how many epoch checkpoints to keep (≥ 2 lets a damaged newest
            checkpoint fall back to the one before).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        batch_size: int = 128,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
        progress: bool = True,
        desc: str = "train",
        device: str = "auto",
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        keep_checkpoints: int = 2,
    ) -> None:
        self.config = config
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.seed = seed
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.on_epoch_end = on_epoch_end
        self.progress = progress
        self.desc = desc
        self.accelerator = get_accelerator(device)
        self.num_workers = num_workers
        self.keep_checkpoints = max(1, keep_checkpoints)
        self._wrapped: list[tuple[nn.Module, str, nn.Module]] = []
        if config.precision == "fp16" and self.accelerator.device.type == "cpu":
            # CPU autocast to float16 works but is slow and gains nothing; say so instead.
            raise ConfigError(
                "precision 'fp16' needs a GPU; on CPU use 'bf16' or 'fp32' (train.precision)"
            )

    # -- checkpoints ---------------------------------------------------------------------

    def _checkpoint_path(self, epoch: int) -> Path:
        assert self.checkpoint_dir is not None
        return self.checkpoint_dir / f"epoch_{epoch:04d}.pt"

    def checkpoints(self) -> list[Path]:
        """Epoch checkpoints on disk, newest first."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        return sorted(self.checkpoint_dir.glob("epoch_*.pt"), reverse=True)

    def latest_checkpoint(self) -> dict[str, Any] | None:
        """The newest whole epoch checkpoint; a damaged one is reported and skipped."""
        for path in self.checkpoints():
            try:
                state = safe_load(path)
            except CheckpointError as exc:
                tqdm.write(f"warning: {exc}; falling back to the previous checkpoint")
                continue
            if not isinstance(state, dict) or state.get("format") != EPOCH_FORMAT:
                tqdm.write(f"warning: {path} is not an epoch checkpoint; skipped")
                continue
            return state
        return None

    def _state(
        self,
        method: Distiller,
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any],
        scaler: torch.amp.GradScaler,
        result: FitResult,
    ) -> dict[str, Any]:
        with _Unwrapped(self._wrapped):
            weights = {k: v.detach().cpu() for k, v in method.trainable_state_dict().items()}
        return {
            "format": EPOCH_FORMAT,
            "method": weights,
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: sc.state_dict() for k, sc in schedulers.items()},
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "history": result.history,
            "seconds": result.seconds,
        }

    def _save(self, epoch: int, state: dict[str, Any], suffix: str = "") -> None:
        if self.checkpoint_dir is None or not self.accelerator.is_main_process:
            return
        path = self._checkpoint_path(epoch)
        atomic_save(state, path.with_name(path.stem + suffix + path.suffix))
        for old in self.checkpoints()[self.keep_checkpoints :]:
            old.unlink(missing_ok=True)

    # -- the loop ------------------------------------------------------------------------

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
        checkpoint in ``checkpoint_dir`` (and returns at once if that one is the last)."""
        cfg = self.config
        acc = self.accelerator
        device = acc.device
        if len(train_data) == 0:
            raise DistillError("the training set is empty")
        method.to(device)
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            # In place, so parameter names (and so checkpoints) stay the same.
            for child in method.children():
                # A cohort keeps its members in a container: compile each member.
                members = (
                    list(child.children())
                    if isinstance(child, (nn.ModuleDict, nn.ModuleList))
                    else [child]
                )
                for module in members:
                    if any(True for _ in module.parameters()):
                        module.compile()

        sampler = EpochSampler(len(train_data), self.seed)
        loader = DataLoader(
            train_data,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            # A dataset that changes per epoch (cache views) must be re-sent to the workers.
            persistent_workers=self.num_workers > 0 and not hasattr(train_data, "set_epoch"),
        )
        loader = acc.prepare_data_loader(loader)
        val_loader = None
        if val_data is not None:
            val_loader = DataLoader(val_data, batch_size=self.eval_batch_size)

        groups = {k: v for k, v in method.optimizer_groups().items() if v}
        if not groups:
            raise DistillError("the method has no trainable parameters")
        optimizers = {
            k: OPTIMIZERS[cfg.optimizer.name](v, cfg.optimizer) for k, v in groups.items()
        }
        batches = len(loader)
        steps_per_epoch = math.ceil(batches / cfg.grad_accum_steps)
        schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda step: lr_factor(cfg.schedule, step, steps_per_epoch, cfg.epochs)
            )
            for k, opt in optimizers.items()
        }
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

        result = FitResult()
        start_epoch = 0
        resume_state: dict[str, Any] | None = None
        if resume:
            state = self.latest_checkpoint()
            if state is not None and state.get("batches_done"):
                resume_state = state
            if state is not None:
                method.load_trainable_state_dict(state["method"])
                for k, opt in optimizers.items():
                    opt.load_state_dict(state["optimizers"][k])
                    schedulers[k].load_state_dict(state["schedulers"][k])
                scaler.load_state_dict(state["scaler"])
                set_rng_state(state["rng"])
                start_epoch = int(state["epoch"])
                result.history = list(state["history"])
                result.seconds = float(state["seconds"])

        wrapped = wrap_for_data_parallel(method, acc, cfg.sync_batchnorm)
        try:
            return self._loop(
                method,
                train_data,
                loader,
                sampler,
                val_loader,
                eval_models,
                optimizers,
                schedulers,
                scaler,
                groups,
                batches,
                result,
                start_epoch,
                resume_state,
                wrapped,
            )
        finally:
            unwrap(wrapped)

    def _loop(
        self,
        method: Distiller,
        train_data: Dataset,
        loader: Any,
        sampler: EpochSampler,
        val_loader: DataLoader | None,
        eval_models: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        schedulers: dict[str, Any],
        scaler: torch.amp.GradScaler,
        groups: dict[str, list[nn.Parameter]],
        batches: int,
        result: FitResult,
        start_epoch: int,
        resume_state: dict[str, Any] | None,
        wrapped: list[tuple[nn.Module, str, nn.Module]],
    ) -> FitResult:
        cfg = self.config
        acc = self.accelerator
        device = acc.device
        self._wrapped = wrapped

        def optimizer_step(names: list[str]) -> None:
            if cfg.clip_grad_norm is not None:
                # Per group: one cohort member's gradient norm must not clip another's.
                for name in names:
                    scaler.unscale_(optimizers[name])
                    torch.nn.utils.clip_grad_norm_(groups[name], cfg.clip_grad_norm)
            for name in names:
                scaler.step(optimizers[name])
            scaler.update()
            for name in names:
                optimizers[name].zero_grad(set_to_none=True)
                schedulers[name].step()

        def check_finite(out: Output, epoch: int, index: int) -> bool:
            nonlocal bad_steps
            if torch.isfinite(out.loss):
                return True
            bad_steps += 1
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in out.parts.items())
            if bad_steps > cfg.max_bad_steps:
                raise NonFiniteLossError(
                    f"{self.desc}: the loss is {float(out.loss)} at epoch {epoch + 1}, "
                    f"step {index + 1} (parts: {parts}). Likely causes: a learning rate "
                    f"too high (optimizer.lr={cfg.optimizer.lr}), an extreme temperature, "
                    "or fp16 overflow (try bf16). The last whole checkpoint is kept; set "
                    "train.max_bad_steps to skip a few bad steps instead."
                )
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            return False

        bad_steps = 0
        all_groups = list(optimizers)
        with StopSignals() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                seed_everything(derive_seed(self.seed, "epoch", epoch))
                done_batches, sums, seen, carried = 0, {}, 0, 0.0
                if resume_state is not None:
                    # Continue the interrupted epoch: skip the batches it already trained on.
                    done_batches = int(resume_state["batches_done"])
                    sums = dict(resume_state["partial_sums"])
                    seen = int(resume_state["partial_seen"])
                    carried = float(resume_state["partial_seconds"])
                    set_rng_state(resume_state["rng"])
                    resume_state = None
                sampler.skip = done_batches * self.batch_size * acc.num_processes
                # Through the prepared loader: it re-applies its own epoch counter on every iter().
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
                sampler.set_epoch(epoch)
                if hasattr(train_data, "set_epoch"):
                    train_data.set_epoch(epoch)
                method.train()
                started = time.perf_counter() - carried
                bar = tqdm(
                    total=batches,
                    initial=done_batches,
                    desc=f"{self.desc} {epoch + 1}/{cfg.epochs}",
                    disable=not (self.progress and acc.is_main_process),
                    leave=False,
                    dynamic_ncols=True,
                )
                for opt in optimizers.values():
                    opt.zero_grad(set_to_none=True)
                for index, batch in enumerate(loader, start=done_batches):
                    inputs, targets = batch[0], batch[1]
                    if cfg.channels_last and inputs.dim() == 4:
                        inputs = inputs.contiguous(memory_format=torch.channels_last)
                    # A third item is the samples' cache keys (see distill.cache.ViewDataset).
                    extra = {"keys": batch[2]} if len(batch) > 2 else {}
                    outputs: list[Output] = []
                    with autocast(device, cfg.precision):
                        sequence = method.step_losses(inputs, targets)
                    if sequence is not None:
                        if cfg.grad_accum_steps != 1:
                            raise ConfigError(
                                "grad_accum_steps must be 1 for a method that updates its models "
                                f"one after another, got {cfg.grad_accum_steps}"
                            )
                        while True:
                            with autocast(device, cfg.precision):
                                item = next(sequence, None)
                            if item is None:
                                break
                            name, out = item
                            outputs.append(out)
                            if not check_finite(out, epoch, index):
                                continue
                            scaler.scale(out.loss).backward()
                            optimizer_step([name])
                    else:
                        with autocast(device, cfg.precision):
                            out = method(inputs, targets, **extra)
                        if not check_finite(out, epoch, index):
                            continue
                        outputs.append(out)
                        scaler.scale(out.loss / cfg.grad_accum_steps).backward()
                        if (index + 1) % cfg.grad_accum_steps == 0 or index + 1 == batches:
                            optimizer_step(all_groups)
                    n = targets.shape[0]
                    seen += n
                    for out in outputs:
                        sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach()) * n
                        for key, value in out.parts.items():
                            sums[key] = sums.get(key, 0.0) + float(value) * n
                    elapsed = time.perf_counter() - started
                    bar.set_postfix(
                        {k: f"{v / max(seen, 1):.4f}" for k, v in sums.items()}
                        | {"img/s": f"{seen / max(elapsed, 1e-9):.0f}"},
                        refresh=False,
                    )
                    bar.update(1)
                    at_boundary = sequence is not None or (index + 1) % cfg.grad_accum_steps == 0
                    if stop.received is not None and at_boundary and index + 1 < batches:
                        bar.close()
                        self._save(
                            epoch,
                            {
                                **self._state(method, optimizers, schedulers, scaler, result),
                                "epoch": epoch,
                                "batches_done": index + 1,
                                "partial_sums": sums,
                                "partial_seen": seen,
                                "partial_seconds": time.perf_counter() - started,
                            },
                            suffix=f"_step_{index + 1:06d}",
                        )
                        name = signal.Signals(stop.received).name
                        raise TrainingInterrupted(
                            f"{self.desc}: stopped by {name} at epoch {epoch + 1}, step "
                            f"{index + 1}/{batches}; a checkpoint was written",
                            stop.received,
                        )
                sampler.skip = 0
                bar.close()
                train_metrics = self._reduce(sums, seen)
                val: dict[str, dict[str, float]] = {}
                if val_loader is not None:
                    for name, model in eval_models.items():
                        val[name] = evaluate(
                            model, val_loader, accelerator=acc, precision=cfg.precision
                        )
                method.epoch_end()
                seconds = time.perf_counter() - started
                result.seconds += seconds
                record = {
                    "epoch": epoch + 1,
                    "train": train_metrics,
                    "val": val,
                    "seconds": round(seconds, 3),
                    "lr": optimizers[all_groups[0]].param_groups[0]["lr"],
                    "images": int(seen * acc.num_processes),
                }
                result.history.append(record)
                self._save(
                    epoch + 1,
                    {
                        **self._state(method, optimizers, schedulers, scaler, result),
                        "epoch": epoch + 1,
                    },
                )
                if self.progress and acc.is_main_process:
                    shown = " ".join(f"{k} {v:.4f}" for k, v in train_metrics.items())
                    accs = " ".join(f"val_acc[{k}] {v['accuracy']:.4f}" for k, v in val.items())
                    tqdm.write(
                        f"{self.desc} {epoch + 1}/{cfg.epochs}: {shown} {accs} ({seconds:.1f} s)"
                    )
                if self.on_epoch_end is not None:
                    self.on_epoch_end(record)
                if stop.received is not None and epoch + 1 < cfg.epochs:
                    name = signal.Signals(stop.received).name
                    raise TrainingInterrupted(
                        f"{self.desc}: stopped by {name} after epoch {epoch + 1}; a checkpoint "
                        "was written",
                        stop.received,
                    )
        return result

    def _reduce(self, sums: dict[str, float], seen: int) -> dict[str, float]:
        """Per-sample means of the loss parts, averaged over every process."""
        keys = sorted(sums)
        acc = self.accelerator
        values = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64)
        if acc.num_processes > 1:
            values = acc.reduce(values.to(acc.device), reduction="sum").cpu()
        total = max(float(values[-1]), 1.0)
        return {k: float(v) / total for k, v in zip(keys, values[:-1].tolist(), strict=True)}
