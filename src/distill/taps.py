"""Capture the inputs or outputs of submodules by dotted name, with forward hooks.

No model is edited: a :class:`Taps` registers one forward hook per name and removes them all
when it is closed::

    with Taps(model, ["stages.1", "head.fc"]) as taps:
        logits = model(x)
        feature = taps["stages.1"]          # that submodule's output in the last forward

Names are those of ``model.named_modules()`` (``"layer2"``, ``"features.3"``,
``"encoder.layer.3.output"``); ``distill layers ARCH`` prints them for a zoo model, and
:func:`layer_shapes` for any model.

Which tensor is kept when a module returns (or receives) more than one thing
(:func:`pick_tensor`):

- a tensor is kept as is;
- with ``select=None``, the first tensor found depth-first: the first tensor item of a tuple or
  list (``(hidden_states, attention)`` gives ``hidden_states``), the first tensor value of a
  dict or a Hugging Face ``ModelOutput`` (so ``last_hidden_state`` or ``logits``), the first
  tensor field of a dataclass; for a captured input, the first tensor among the positional
  arguments, then among the keyword arguments;
- ``select=i`` (an int) takes item ``i`` of a tuple or list (of the positional arguments for
  an input); ``select="key"`` a key of a dict or an attribute (``"pooler_output"``); a callable
  ``select(value)`` returns the tensor itself.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .devices import model_device, to_device
from .errors import ConfigError, closest

Selector = int | str | Callable[[Any], torch.Tensor] | None
"""How to pick a tensor out of a module's output or input (see the module docstring)."""

Capture = Literal["output", "input"]

__all__ = [
    "Capture",
    "Selector",
    "Taps",
    "feeding_parameters",
    "layer_shapes",
    "pick_tensor",
    "probe",
    "resolve_module",
    "unwrap",
]


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, (tuple, list)):
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        items = (getattr(value, f.name) for f in dataclasses.fields(value))
    else:
        return None
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


def pick_tensor(value: Any, select: Selector = None, *, what: str = "value") -> torch.Tensor:
    """The tensor that ``select`` designates in ``value`` (a module's output or input).

    Args:
        value: a tensor, tuple, list, dict, dataclass or Hugging Face ``ModelOutput``.
        select: ``None`` (the first tensor, depth-first), an index, a key or attribute name,
            or a callable returning the tensor.
        what: how to name ``value`` in an error (e.g. ``"output of 'encoder.layer.0'"``).

    Raises:
        ConfigError: ``select`` designates nothing, or not a tensor.
    """
    if callable(select):
        found = select(value)
    elif select is None:
        found = _first_tensor(value)
    elif isinstance(select, int):
        if not isinstance(value, (tuple, list)) or not -len(value) <= select < len(value):
            size = len(value) if isinstance(value, (tuple, list)) else "not a sequence"
            raise ConfigError(
                f"select={select}: the {what} is a {type(value).__name__} ({size}); an index "
                "needs a tuple or list long enough"
            )
        found = value[select]
    elif isinstance(value, Mapping) and select in value:
        found = value[select]
    elif hasattr(value, select):
        found = getattr(value, select)
    else:
        keys = list(value) if isinstance(value, Mapping) else []
        raise ConfigError(
            f"select={select!r}: the {what} ({type(value).__name__}) has no such key or "
            f"attribute{f'; keys: {keys}' if keys else ''}"
        )
    if not isinstance(found, torch.Tensor):
        raise ConfigError(
            f"the {what} holds no tensor where select={select!r} points (found "
            f"{type(found).__name__}); pass select= an index, a key or a callable"
        )
    return found


_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers and ``torch.compile``'s
    ``OptimizedModule`` (``_orig_mod``), in any nesting; ``model`` itself when it is not
    wrapped. Layer names (and saved weights' names) are those of the wrapped model."""
    while True:
        if isinstance(model, _WRAPPERS):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule of ``model`` called ``name`` (dotted; ``""`` is ``model`` itself), looking
    through data-parallel wrappers (:func:`unwrap`).

    Raises:
        ConfigError: no such submodule; the message lists the closest existing names.
    """
    if not isinstance(name, str):
        raise ConfigError(f"a layer name must be a string, got {name!r}")
    model = unwrap(model)
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if isinstance(module, nn.Module):
        return module
    names = [n for n, _ in model.named_modules() if n]
    parts = name.split(".")
    prefixes = (".".join(parts[:depth]) for depth in range(len(parts) - 1, 0, -1))
    prefix = next((p for p in prefixes if p in names), "")
    if prefix:
        # "layer3.9" when layer3 has 6 blocks: what exists under layer3, closest first.
        under = [n for n in names if n.startswith(f"{prefix}.") and "." not in n[len(prefix) + 1 :]]
        hints = sorted(under, key=lambda n: -difflib.SequenceMatcher(None, name, n).ratio())[:8]
    else:
        hints = closest(name, names, n=5) or [n for n in names if "." not in n][:8]
    listed = ", ".join(repr(h) for h in hints) if hints else "(the model has no submodules)"
    raise ConfigError(
        f"{type(model).__name__} has no submodule {name!r}; closest names: {listed} (see all "
        "with `distill layers ARCH` or `[n for n, _ in model.named_modules()]`)"
    )


class _Stop(Exception):
    """Raised by a hook to end a forward once every tap has fired."""


class Taps:
    """Forward hooks that keep the outputs (or inputs) of submodules by name.

    Args:
        model: any ``nn.Module``; it is not changed except for the hooks, which are removed
            by :meth:`close` (or when the ``with`` block ends). In a DistributedDataParallel
            or DataParallel wrapper, names are those of the wrapped model.
        names: one dotted name or several.
        capture: ``"output"`` (default) or ``"input"``; or a mapping from name to either.
        select: which tensor to keep when there are several (see :func:`pick_tensor`); one
            selector for every name, or a mapping from name to selector.
        detach: keep detached tensors (for features that only serve as targets).

    Each forward of ``model`` starts with no captures, so ``taps[name]`` is always from the
    last forward. A name that was not run in it raises ``KeyError``.
    """

    def __init__(
        self,
        model: nn.Module,
        names: str | Sequence[str],
        *,
        capture: Capture | Mapping[str, Capture] = "output",
        select: Selector | Mapping[str, Selector] = None,
        detach: bool = False,
    ) -> None:
        self.model = model
        self.names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        if not self.names:
            raise ConfigError("Taps needs at least one layer name")
        self.detach = detach
        self._features: dict[str, torch.Tensor] = {}
        self._stop_when_complete = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        modules = {name: resolve_module(model, name) for name in self.names}
        try:
            self._handles.append(unwrap(model).register_forward_pre_hook(self._reset))
            for name, module in modules.items():
                kind = capture[name] if isinstance(capture, Mapping) else capture
                if kind not in ("output", "input"):
                    raise ConfigError(f"capture for {name!r} must be 'output' or 'input'")
                chosen = select.get(name) if isinstance(select, Mapping) else select
                hook = self._make_hook(name, kind, chosen)
                self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
        except BaseException:
            self.close()
            raise

    def _reset(self, module: nn.Module, args: Any) -> None:
        self._features.clear()

    def _make_hook(self, name: str, kind: Capture, select: Selector) -> Callable[..., None]:
        what = f"{kind} of {name!r}"

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if kind == "output":
                value = pick_tensor(output, select, what=what)
            elif select is None:
                found = _first_tensor(args)
                value = found if found is not None else pick_tensor(kwargs, None, what=what)
            else:
                value = pick_tensor(args if isinstance(select, int) else kwargs, select, what=what)
            self._features[name] = value.detach() if self.detach else value
            if self._stop_when_complete and len(self._features) == len(self.names):
                raise _Stop

        return hook

    # -- reading ---------------------------------------------------------------------------

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._features:
            return self._features[name]
        if name in self.names:
            raise KeyError(f"layer {name!r} did not run in the last forward of the model")
        raise KeyError(f"layer {name!r} is not tapped; tapped: {', '.join(self.names)}")

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __iter__(self) -> Iterator[str]:
        return iter(self._features)

    def __len__(self) -> int:
        return len(self._features)

    def features(self) -> dict[str, torch.Tensor]:
        """The captures of the last forward, by name (a new dict)."""
        return dict(self._features)

    # -- running ---------------------------------------------------------------------------

    def run_until_captured(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call ``model(*args, **kwargs)`` and stop it as soon as every tap has fired.

        Layers after the last tapped one do not run at all: no compute, and no BatchNorm
        running statistics updated. Returns the features by name.

        The stop happens inside the (unwrapped) model's forward, which then returns the
        features, so a DistributedDataParallel wrapper around the model sees a normal forward:
        it finds the parameters the features used and synchronises their gradients.

        Raises:
            ConfigError: the forward ended without running some tapped layer.
        """
        inner = unwrap(self.model)
        shadowed = inner.__dict__.get("forward")
        original = inner.forward

        def forward_until_captured(*a: Any, **k: Any) -> Any:
            try:
                return original(*a, **k)
            except _Stop:
                return dict(self._features)

        self._features.clear()
        self._stop_when_complete = True
        inner.forward = forward_until_captured
        try:
            self.model(*args, **kwargs)
        except _Stop:
            pass  # the model itself is tapped: its hook fires after its forward returned
        finally:
            self._stop_when_complete = False
            if shadowed is None:
                del inner.forward
            else:
                inner.forward = shadowed
        missing = [n for n in self.names if n not in self._features]
        if missing:
            raise ConfigError(
                f"layers {missing} did not run in a forward of {type(inner).__name__}; "
                "tap layers that the forward calls"
            )
        return dict(self._features)

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every hook and drop the captures (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._features.clear()

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A Taps dropped without close() must not leave hooks on the user's model.
        handles = getattr(self, "_handles", None)
        if handles:
            self.close()


def _call(model: nn.Module, inputs: Any, task: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` calling ``model`` on ``inputs`` (a tensor, or a dict batch called as
    ``task`` says), with the tensors moved to the model's device."""
    from .tasks import get_task

    if isinstance(inputs, torch.Tensor):
        return (inputs.to(model_device(model, inputs.device)),), {}
    return get_task(task or "classification").inputs(to_device(inputs, model_device(model)))


def probe(
    model: nn.Module,
    names: str | Sequence[str],
    inputs: torch.Tensor | Mapping[str, Any],
    *,
    select: Selector | Mapping[str, Selector] = None,
    task: Any = None,
) -> dict[str, torch.Tensor]:
    """The features ``names`` of ``model`` for ``inputs``, from one forward that changes
    nothing: eval mode (BatchNorm statistics untouched), no gradients, stopped after the
    last tapped layer. The model's train/eval mode is restored afterwards.

    ``inputs`` is a tensor (``model(inputs)``) or a dict batch, which ``task`` (a
    :class:`~distill.tasks.Task` or its name; default ``classification``) says how to pass;
    its tensors are moved to the model's device.
    """
    was_training = model.training
    model.eval()
    try:
        args, kwargs = _call(model, inputs, task)
        with torch.no_grad(), Taps(model, names, select=select) as taps:
            return taps.run_until_captured(*args, **kwargs)
    finally:
        model.train(was_training)


def feeding_parameters(
    model: nn.Module,
    names: str | Sequence[str],
    inputs: torch.Tensor | Mapping[str, Any],
    *,
    task: Any = None,
) -> list[str]:
    """Names of the parameters of ``model`` that the features ``names`` depend on.

    Found by back-propagating from the features of one eval-mode forward on ``inputs`` (a
    tensor or a dict batch, as for :func:`probe`), stopped after the last tapped layer, so it
    follows the real data flow of any model: parameters of layers after the taps, or on
    branches that do not reach them, are left out. ``requires_grad`` of the model's
    parameters is left as it was.
    """
    was_training = model.training
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    try:
        model.requires_grad_(True)
        args, kwargs = _call(model, inputs, task)
        with torch.enable_grad(), Taps(model, names) as taps:
            features = taps.run_until_captured(*args, **kwargs)
            named = [(n, p) for n, p in model.named_parameters()]
            total = sum(f.float().sum() for f in features.values() if f.requires_grad)
            if not isinstance(total, torch.Tensor):
                return []
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
        return [n for (n, _), g in zip(named, grads, strict=True) if g is not None]
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)


def layer_shapes(model: nn.Module, *inputs: Any) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """``(name, module type, output shape)`` of every named submodule of ``model``, in
    ``named_modules()`` order, for one eval-mode forward on ``inputs`` without gradients (the
    model is left as it was). The shape is that of the tensor a :class:`Taps` of that name
    would return (:func:`pick_tensor`'s default); ``None`` for a module that did not run or
    returned no tensor. A module run twice shows its last output.
    """
    modules = [(n, m) for n, m in model.named_modules() if n]
    shapes: dict[str, tuple[int, ...] | None] = {}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            found = _first_tensor(output)
            shapes[name] = tuple(found.shape) if found is not None else None

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(n, type(m).__name__, shapes.get(n)) for n, m in modules]
