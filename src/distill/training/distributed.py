"""Processes and devices: the process's Accelerator, and data parallelism of trained models.

Every process runs the same loop on its share of the data (Accelerate prepares the loaders).
The models a method trains are wrapped in ``DistributedDataParallel`` for the length of a
phase; teachers never are (they get no gradients, and a frozen module inside DDP is a known
failure). :func:`trained_members` is the one walk over a method's trained models, used both
to compile them and to wrap them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import Accelerator
from torch import nn

from ..errors import ConfigError
from ..teachers import Teacher

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


def sum_over_processes(tensor: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """``tensor`` summed over every process (itself with one process)."""
    if accelerator.num_processes == 1:
        return tensor
    return accelerator.reduce(tensor.to(accelerator.device), reduction="sum")


Member = tuple[nn.Module, str, nn.Module]
"""``(parent, attribute, module)``: where a trained model sits in a method."""


def trained_members(method: nn.Module) -> list[Member]:
    """The models ``method`` trains, with where they sit: its children that are not teachers,
    the members of a ``ModuleDict``/``ModuleList`` (a cohort) one by one, and only those with
    a parameter that requires a gradient."""
    members = []
    for name, child in method.named_children():
        if isinstance(child, Teacher):
            continue
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            members += [(child, key, module) for key, module in child.named_children()]
        else:
            members.append((method, name, child))
    return [m for m in members if any(p.requires_grad for p in m[2].parameters())]


def compile_models(method: nn.Module) -> None:
    """``torch.compile`` every trained model and teacher of ``method`` in place (parameter
    names, and so checkpoints, stay the same)."""
    for _, _, module in trained_members(method):
        module.compile()
    for child in method.modules():
        if isinstance(child, Teacher):
            child.module.compile()


class DataParallel:
    """While active, every trained model of ``method`` is wrapped in DistributedDataParallel
    (several processes only; otherwise nothing changes).

    ``with DataParallel(method, accelerator) as ddp: ...``; inside, ``with ddp.originals():``
    puts the unwrapped models back for a moment (to checkpoint their weights).
    """

    def __init__(
        self, method: nn.Module, accelerator: Accelerator, sync_batchnorm: bool = False
    ) -> None:
        self.method = method
        self.accelerator = accelerator
        self.sync_batchnorm = sync_batchnorm
        self.members: list[Member] = []
        self.wrappers: list[nn.Module] = []

    def __enter__(self) -> DataParallel:
        if self.accelerator.num_processes == 1:
            return self
        from torch.nn.parallel import DistributedDataParallel

        for parent, key, module in trained_members(self.method):
            if self.sync_batchnorm:
                module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
            on_cuda = any(p.is_cuda for p in module.parameters())
            device_ids = [self.accelerator.local_process_index] if on_cuda else None
            # Some phases train part of a model (FitNets' hint phase): unused parameters are
            # expected, not an error.
            wrapper = DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=True
            )
            setattr(parent, key, wrapper)
            self.members.append((parent, key, module))
            self.wrappers.append(wrapper)
        return self

    def _put(self, modules: list[nn.Module]) -> None:
        for (parent, key, _), module in zip(self.members, modules, strict=True):
            setattr(parent, key, module)

    def __exit__(self, *exc: object) -> None:
        self._put([module for _, _, module in self.members])

    @contextmanager
    def originals(self) -> Iterator[None]:
        """The unwrapped models in place for the block, the wrappers again after it."""
        self._put([module for _, _, module in self.members])
        try:
            yield
        finally:
            self._put(self.wrappers)
