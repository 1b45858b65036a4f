"""Fully sharded data parallelism (``train.strategy: fsdp``) with PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``), and teachers sharded for inference.

Under ``fsdp`` every process keeps only its shard of each trained model's parameters,
gradients and optimizer state; a block's parameters are gathered whole just for its forward
and backward. Each model is split into FSDP units by block (:func:`find_blocks`: the classes
named by ``train.fsdp_blocks``, else a Hugging Face model's ``_no_split_modules`` — its
decoder layers —, else a zoo model's stages), the rest of the model being one more unit.

A sharded model is a *copy* (:func:`shard_copy`) that takes the original's place in the method
for the phase, as a DDP wrapper does: the copy starts from the original's tensors, and at the
end of the phase the trained weights are gathered whole into the original, which then is an
ordinary module again (on the CPU), so that reports, ``save_pretrained`` and later stages see
plain models. Teachers get sharded copies too (``teacher_placement: shard``, or
``cpu_offload`` with the shards in host memory), never optimised and dropped at the end.

Gradients: FSDP reduce-scatters them as the mean over processes, as DDP all-reduces them, so
the loop's weighting (each micro-batch's loss times its share of the step's positions times
the number of processes) gives the gradient of the mean over the global batch under both.

Checkpoints: the trained models' state and the optimizers' state are gathered whole on the
main process (:meth:`FullyShardedParallel.trainable_state`,
:meth:`~FullyShardedParallel.optimizer_state`) and written in the one-file epoch checkpoint
that ``ddp`` writes, so resuming, falling back to an older checkpoint and the final weights
work as they do there (see docs/distributed.md for why not a distributed checkpoint).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from ..config import TrainConfig
from ..errors import ConfigError, closest
from ..precision import DTYPES
from ..teachers import Teacher
from .distributed import DataParallel, Member, sum_over_processes, trained_members
from .optim import Optimizers


def find_blocks(model: nn.Module, names: Iterable[str] = ()) -> list[nn.Module]:
    """The submodules of ``model`` that FSDP shards as units of their own, in the order of
    ``model.modules()``: those whose class is one of ``names`` when ``model`` has any; else the
    classes of a Hugging Face model's ``_no_split_modules`` (its decoder or encoder layers);
    else a zoo model's stages (``stages.0``, ``stages.1``...); else none (the model is one
    unit)."""
    for wanted in (set(names), set(getattr(model, "_no_split_modules", None) or ())):
        found = [m for m in model.modules() if m is not model and type(m).__name__ in wanted]
        if found:
            return found
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential) and hasattr(model, "stem"):
        return list(stages)
    return []


def check_blocks(
    names: Sequence[str], models: Mapping[str, nn.Module], field: str = "train.fsdp_blocks"
) -> None:
    """Raise :class:`ConfigError` naming ``field`` for a block class in ``names`` that no
    module of ``models`` (by name) has, with the closest class names they do have."""
    classes = sorted({type(m).__name__ for model in models.values() for m in model.modules()})
    for name in names:
        if name not in classes:
            near = closest(name, classes)
            hint = f"; closest: {', '.join(near)}" if near else ""
            raise ConfigError(
                f"{field}: no module of {', '.join(models)} is a {name!r}{hint}; their classes: "
                f"{', '.join(classes)}"
            )


def mixed_precision(precision: str, *, trained: bool) -> MixedPrecisionPolicy:
    """FSDP's mixed-precision policy for a ``precision`` name: ``fp32`` none; ``bf16``/``fp16``
    gather the parameters in that dtype for the forward and backward (the shards keep
    theirs), and a trained model's gradients are reduced in float32."""
    dtype = DTYPES[precision]
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if trained else None)


def alias_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are new tensors on the storage of
    the original's: it costs no memory, and moving or sharding the copy's tensors (which
    rebinds them) leaves the original's in place."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = b.detach()
    return copy.deepcopy(module, memo)


def shard_copy(
    module: nn.Module,
    mesh: DeviceMesh,
    *,
    blocks: Iterable[str] = (),
    mp_policy: MixedPrecisionPolicy | None = None,
    offload: bool = False,
    inference: bool = False,
) -> nn.Module:
    """A copy of ``module`` sharded over ``mesh`` with ``fully_shard``: each of its blocks
    (:func:`find_blocks` with the class names ``blocks``) one unit, the rest one more.

    ``module`` is first moved to the CPU, where it keeps its weights: the copy shares them
    (:func:`alias_copy`) until FSDP copies each process's shard to the mesh's device (one unit
    at a time). ``offload`` keeps the shards in host memory (``CPUOffloadPolicy``) and copies
    them to the device for each forward; ``inference`` frees every gathered unit after its
    forward (a teacher has no backward to keep them for)."""
    module.to("cpu")
    twin = alias_copy(module)
    if offload:
        policy: OffloadPolicy = CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda")
    else:
        policy = OffloadPolicy()
    options: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": mp_policy or MixedPrecisionPolicy(),
        "offload_policy": policy,
    }
    if inference:
        options["reshard_after_forward"] = True
    for block in reversed(find_blocks(twin, blocks)):  # inner units before the ones around them
        fully_shard(block, **options)
    fully_shard(twin, **options)
    return twin


def full_state(
    module: nn.Module, state: Mapping[str, torch.Tensor] | None = None, *, agree: bool = False
) -> dict[str, torch.Tensor]:
    """``state`` (default ``module.state_dict()``) with every sharded tensor gathered whole, on
    the CPU. With ``agree``, the tensors FSDP does not shard (buffers, such as BatchNorm
    statistics, which each process keeps for itself) are the main process's on every process,
    as DDP makes them. A collective call: every process makes it, with the same keys."""
    state = module.state_dict() if state is None else state
    whole = {}
    for key, value in state.items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        elif agree:
            value = value.detach().clone()
            torch.distributed.broadcast(value, src=0)
        whole[key] = value.detach().cpu()
    return whole


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters that this process holds: a sharded parameter's local
    shard only."""
    total = 0
    for p in module.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        total += local.numel() * local.element_size()
    return total


def any_process(accelerator: Accelerator) -> Callable[[bool], bool]:
    """``agree(flag)``: whether ``flag`` is true on any process (every process calls it)."""

    def agree(flag: bool) -> bool:
        value = torch.tensor([float(flag)], device=accelerator.device)
        return bool(sum_over_processes(value, accelerator).item() > 0)

    return agree


def device_mesh(accelerator: Accelerator) -> DeviceMesh:
    """The one-dimensional mesh of every process, on the accelerator's device type."""
    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def shard_teacher(teacher: Teacher, accelerator: Accelerator, config: TrainConfig) -> nn.Module:
    """A sharded copy of ``teacher.module`` for inference (``config.placement`` ``shard`` or
    ``cpu_offload``), gathered in the teacher's precision (else the phase's). The teacher is
    told that its forward is now collective (:attr:`Teacher.in_step`)."""
    precision = teacher.precision if teacher.precision != "fp32" else config.precision
    twin = shard_copy(
        teacher.module,
        device_mesh(accelerator),
        blocks=config.fsdp_blocks,
        mp_policy=mixed_precision(precision, trained=False),
        offload=config.placement == "cpu_offload",
        inference=True,
    )
    teacher.in_step = any_process(accelerator)
    return twin


class ForwardWatch:
    """Refuses forwards of FSDP units that stop part-way.

    FSDP gathers a unit's parameters in its forward pre-hook and reshards them (and, for a
    trained model, arranges the reduction of their gradients) in its forward hook; a forward
    that raises skips the hook and leaves FSDP's state undefined (its documentation says so).
    Methods that read a layer's output and skip the layers after it
    (:meth:`~distill.taps.Taps.run_until_captured`) stop the model's forward with an exception
    raised after that layer: harmless when the layer is a block itself or outside the blocks
    (the units around it return normally), refused when it lies inside a block. After each
    forward of the method, and before each forward of a watched model, every watched forward
    must have finished.
    """

    def __init__(self, method: nn.Module, where: str = "") -> None:
        self.method = method
        self.where = where
        self.running: dict[int, tuple[str, str, bool]] = {}
        self.handles = [method.register_forward_hook(lambda *_: self.check())]

    def add(self, module: nn.Module, name: str, *, teacher: bool) -> None:
        """Watch the FSDP units of ``module`` (the sharded model ``name`` of the method; a
        teacher's or not)."""
        for unit_name, unit in module.named_modules():
            if not isinstance(unit, FSDPModule):
                continue
            where = (name, unit_name, teacher)

            def before(mod: nn.Module, args: Any, where: tuple[str, str, bool] = where) -> None:
                if not where[1]:  # the model's own forward starts: none of its units runs
                    self.check()
                self.running[id(mod)] = where

            def after(mod: nn.Module, args: Any, output: Any) -> None:
                self.running.pop(id(mod), None)

            self.handles.append(unit.register_forward_pre_hook(before))
            self.handles.append(unit.register_forward_hook(after))

    def check(self) -> None:
        """Raise :class:`ConfigError` if a watched forward stopped part-way."""
        if not self.running:
            return
        name, unit, teacher = next(reversed(self.running.values()))  # the innermost
        self.running.clear()
        fix = "train.teacher_placement: replicate" if teacher else "train.strategy: ddp"
        raise ConfigError(
            f"{self.where + ': ' if self.where else ''}{type(self.method).__name__} stops the "
            f"forward of the sharded model {name!r} inside its FSDP unit {unit or name!r} (it "
            "reads the output of a layer there and skips the layers after it), which leaves "
            "FSDP's state undefined; take a layer that is a block itself or outside the blocks "
            f"(train.fsdp_blocks), or set {fix} for this stage"
        )

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


class FullyShardedParallel(DataParallel):
    """``train.strategy: fsdp`` on several processes: while active, a sharded copy
    (:func:`shard_copy`, blocks from ``config.fsdp_blocks``, mixed precision from
    ``config.precision``) replaces every trained model of the method, and the teachers are
    placed as ``config.placement`` says (default ``shard``). On a normal exit the trained
    weights are gathered into the original models (a collective call); after an error the
    originals are put back as they were (their last checkpoint is on disk).

    Build optimizers inside the block, from the method's parameters then (the shards). The
    originals (:meth:`originals`) keep their weights of before the phase until it ends; use
    :meth:`live` for what trains in their place.
    """

    def __init__(
        self, method: nn.Module, accelerator: Accelerator, *, config: TrainConfig, where: str = ""
    ) -> None:
        super().__init__(method, accelerator, config=config, where=where)
        self._members = trained_members(method)

    def sharded_members(self) -> list[Member]:
        return self._members

    def __enter__(self) -> FullyShardedParallel:
        cfg = self.config
        assert cfg is not None
        if cfg.fsdp_blocks:
            models = {self._names[id(m)]: m for _, _, m in self._members}
            models |= {self._names[id(t)]: t.module for t in self.sharded_teachers()}
            check_blocks(cfg.fsdp_blocks, models)
        self._place()
        assert self._watch is not None
        mesh = device_mesh(self.accelerator)
        policy = mixed_precision(cfg.precision, trained=True)
        for parent, key, module in self._members:
            twin = shard_copy(module, mesh, blocks=cfg.fsdp_blocks, mp_policy=policy)
            setattr(parent, key, twin)
            self._watch.add(twin, self._names[id(module)], teacher=False)
            self.members.append((parent, key, module))
            self.wrappers.append(twin)
            self._live[id(module)] = twin
        self._measure()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            for (_, _, module), twin in zip(self.members, self.wrappers, strict=True):
                module.load_state_dict(full_state(twin, agree=True))
        super().__exit__(exc_type, *exc)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The method's trainable state, gathered whole (every process takes part; only the
        main one keeps the tensors, on the CPU)."""
        state = full_state(self.method, self.method.trainable_state_dict())  # type: ignore[operator]
        return state if self.accelerator.is_main_process else {}

    def optimizer_state(self, optim: Optimizers) -> dict[str, Any]:
        """``optim``'s state with each optimizer's gathered whole on the main process
        (``torch.distributed.checkpoint.state_dict``'s full state dict, keyed by parameter
        name)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = optim.state_dict()
        state["optimizers"] = {
            name: get_optimizer_state_dict(self.method, optimizer, options=options)
            for name, optimizer in optim.optimizers.items()
        }
        return state

    def load_optimizer_state(self, optim: Optimizers, state: dict[str, Any]) -> None:
        """Inverse of :meth:`optimizer_state`: each process takes its shard of the whole
        state it read."""
        options = StateDictOptions(full_state_dict=True)
        for name, optimizer in optim.optimizers.items():
            set_optimizer_state_dict(
                self.method, optimizer, state["optimizers"][name], options=options
            )
            optim.schedulers[name].load_state_dict(state["schedulers"][name])
        optim.scaler.load_state_dict(state["scaler"])


def for_inference(model: nn.Module, accelerator: Accelerator, config: TrainConfig) -> nn.Module:
    """``model`` ready to evaluate on the accelerator's device: where ``config`` shards
    models (:attr:`TrainConfig.shards <distill.config.TrainConfig.shards>`; after such a phase
    they are whole on the CPU) and there are several processes, a sharded copy (every process
    must then run the same number of forwards; ``model`` keeps its weights), else ``model``
    itself, moved to that device (a model loaded for the report may still be on the CPU)."""
    if not config.shards or accelerator.num_processes == 1:
        return model.to(accelerator.device)
    policy = mixed_precision("fp32", trained=False)
    return shard_copy(
        model, device_mesh(accelerator), blocks=config.fsdp_blocks, mp_policy=policy,
        inference=True,
    )
