"""Processes and devices: the process's Accelerator, and how a phase's models spread over
the processes.

Every process runs the same loop on its share of the data (Accelerate prepares the loaders).
With ``train.strategy: ddp`` the models a method trains are wrapped in
``DistributedDataParallel`` for the length of a phase; teachers never are (they get no
gradients, and a frozen module inside DDP is a known failure): they are replicated on every
process, or sharded for inference (``train.teacher_placement``, :mod:`.fsdp`). With
``strategy: fsdp`` the trained models are sharded too (:class:`.fsdp.FullyShardedParallel`).
:func:`trained_members` is the one walk over a method's trained models, used both to compile
them and to wrap them; :func:`parallel` picks the strategy of a phase.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from ..teachers import Teacher

if TYPE_CHECKING:
    from .fsdp import ForwardWatch
    from .optim import Optimizers

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


def check_processes(config: TrainConfig, accelerator: Accelerator, where: str = "train") -> None:
    """Refuse settings these processes cannot run (before anything trains): SyncBatchNorm over
    CPU processes (torch's SyncBatchNorm runs on CUDA only)."""
    if config.sync_batchnorm and accelerator.num_processes > 1:
        if accelerator.device.type != "cuda":
            raise ConfigError(
                f"{where}.sync_batchnorm: true needs GPUs (torch's SyncBatchNorm runs on CUDA "
                f"only), but the {accelerator.num_processes} processes run on the "
                f"{accelerator.device.type}; set it to false (each process then keeps its own "
                "BatchNorm statistics)"
            )


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

    Given the phase's ``config``, entering also moves the method to the process's device
    (``channels_last`` and ``compile`` as the config says) and places each teacher as
    ``config.placement`` says: ``replicate`` (moved whole), or ``shard``/``cpu_offload`` (a
    sharded copy of it takes the place of its model for the phase, :func:`.fsdp.shard_copy`;
    several processes only). ``where`` prefixes error messages (the phase).

    Attributes:
        placement: for each teacher and trained model (by its name in ``method``) its
            placement and the bytes of parameters this process holds of it (a shard's only).
    """

    def __init__(
        self,
        method: nn.Module,
        accelerator: Accelerator,
        sync_batchnorm: bool = False,
        *,
        config: TrainConfig | None = None,
        where: str = "",
    ) -> None:
        self.method = method
        self.accelerator = accelerator
        self.config = config
        self.sync_batchnorm = sync_batchnorm or (config is not None and config.sync_batchnorm)
        self.where = where
        self.members: list[Member] = []
        self.wrappers: list[nn.Module] = []
        self.teachers: list[tuple[Teacher, nn.Module]] = []
        self.placement: dict[str, dict[str, Any]] = {}
        self._names = {id(m): name for name, m in method.named_modules()}
        self._live: dict[int, nn.Module] = {}
        self._watch: ForwardWatch | None = None

    @property
    def several(self) -> bool:
        """Whether there is more than one process."""
        return self.accelerator.num_processes > 1

    def sharded_teachers(self) -> list[Teacher]:
        """The teachers a sharded copy replaces for the phase."""
        if self.config is None or not self.several or self.config.placement == "replicate":
            return []
        return [t for t in self.method.modules() if isinstance(t, Teacher)]

    def sharded_members(self) -> list[Member]:
        """The trained models a sharded copy replaces for the phase (none under ddp)."""
        return []

    def __enter__(self) -> DataParallel:
        if self.config is not None:
            self._place()
        if self.several:
            self._wrap()
        self._measure()
        return self

    def _place(self) -> None:
        """Device, memory format and compilation; then the sharded copies take their places."""
        cfg = self.config
        assert cfg is not None
        away = [(t, "module", t.module) for t in self.sharded_teachers()]
        away += self.sharded_members()
        for parent, key, _ in away:  # out of the way: what is sharded never moves whole
            setattr(parent, key, nn.Module())
        try:
            self.method.to(self.accelerator.device)
            if cfg.channels_last:
                self.method.to(memory_format=torch.channels_last)
            if cfg.compile:
                compile_models(self.method)
        finally:
            for parent, key, module in away:
                setattr(parent, key, module)
        if not away:
            return
        from .fsdp import ForwardWatch, shard_teacher

        self._watch = ForwardWatch(self.method, self.where)
        for teacher in self.sharded_teachers():
            module = teacher.module
            teacher.module = shard_teacher(teacher, self.accelerator, cfg)
            self._watch.add(teacher.module, self._names[id(teacher)], teacher=True)
            self.teachers.append((teacher, module))

    def _wrap(self) -> None:
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

    def _measure(self) -> None:
        from .fsdp import parameter_bytes

        sharded = {id(t) for t, _ in self.teachers}
        asked = self.config.placement if self.config is not None else "replicate"
        for teacher in self.method.modules():
            if isinstance(teacher, Teacher):
                self.placement[self._names[id(teacher)]] = {
                    "placement": asked if id(teacher) in sharded else "replicate",
                    "parameter_bytes": parameter_bytes(teacher.module),
                }
        kind = "shard" if self.sharded_members() else "replicate"
        for _, _, module in self.members or trained_members(self.method):
            name = self._names.get(id(module), type(module).__name__)
            live = self._live.get(id(module), module)
            self.placement[name] = {"placement": kind, "parameter_bytes": parameter_bytes(live)}

    def _put(self, modules: list[nn.Module]) -> None:
        for (parent, key, _), module in zip(self.members, modules, strict=True):
            setattr(parent, key, module)

    def __exit__(self, *exc: object) -> None:
        self._put([module for _, _, module in self.members])
        for teacher, module in self.teachers:
            teacher.module = module
            teacher.in_step = None
        if self._watch is not None:
            self._watch.close()

    @contextmanager
    def originals(self) -> Iterator[None]:
        """The unwrapped models in place for the block, the wrappers again after it."""
        self._put([module for _, _, module in self.members])
        try:
            yield
        finally:
            self._put(self.wrappers)

    def live(self, model: nn.Module) -> nn.Module:
        """What runs in place of ``model`` during the phase (itself, but for a sharded copy),
        for evaluating it."""
        return self._live.get(id(model), model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The method's trainable state, whole, on the CPU (for checkpoints)."""
        with self.originals():
            state = self.method.trainable_state_dict()  # type: ignore[operator]
        return {k: v.detach().cpu() for k, v in state.items()}

    def optimizer_state(self, optim: Optimizers) -> dict[str, Any]:
        """``optim``'s state, whole, for checkpoints."""
        return optim.state_dict()

    def load_optimizer_state(self, optim: Optimizers, state: dict[str, Any]) -> None:
        """Inverse of :meth:`optimizer_state`."""
        optim.load_state_dict(state)


def parallel(
    method: nn.Module, accelerator: Accelerator, config: TrainConfig, where: str = ""
) -> DataParallel:
    """The strategy of a phase (``config.strategy``): :class:`DataParallel`, or with ``fsdp``
    on several processes :class:`.fsdp.FullyShardedParallel`. ``fsdp`` with one process has
    nothing to shard: the models train whole, as with ``ddp``."""
    if config.strategy == "fsdp" and accelerator.num_processes > 1:
        from .fsdp import FullyShardedParallel

        return FullyShardedParallel(method, accelerator, config=config, where=where)
    return DataParallel(method, accelerator, config=config, where=where)
