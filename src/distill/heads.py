"""A model's last hidden states, without its output layer: for losses computed chunk by chunk.

A language model's logits ``[N, L, V]`` are the largest tensor of a step, and all of them come
from one output layer (``lm_head``) applied to the last hidden states ``[N, L, H]``. A loss
that applies that layer itself, a few hundred tokens at a time, never needs them all at once.
:func:`hidden_states` runs the model as usual — through its own ``forward``, so wrappers such
as ``DistributedDataParallel`` see a normal forward — with two hooks on the output layer: a
pre-hook keeps the layer's input and hands the layer an empty sequence (so it computes
nothing), and a forward hook makes that input the model's "logits". The task then picks the
positions as it picks logits (the causal shift). :func:`chunked` then applies the output
layer and a loss a chunk of positions at a time, recomputing each chunk in the backward pass::

    hidden = hidden_states(model, task, batch)           # [N, L−1, H], with the graph
    mask = task.positions(batch)
    (ce,) = chunked(output_layer(model), hidden[mask], 256,
                    lambda logits, y: (F.cross_entropy(logits, y, reduction="sum"),),
                    task.targets(batch)[mask])

Supported models: those whose logits are ``output_layer(model)(last hidden states)`` with
nothing after it, and whose output layer is known: Hugging Face causal LMs
(``get_output_embeddings()``, e.g. llama, qwen2, mistral, gpt2). :func:`check_output_layer`
verifies it once per model on one sequence (a model that post-processes its logits, such as
Gemma 2's soft-capping, is refused with a message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .errors import ConfigError
from .taps import unwrap
from .tasks import Task


def output_layer(model: nn.Module) -> nn.Module:
    """The layer that turns ``model``'s last hidden states into logits (unwrapped from DDP or
    ``torch.compile``).

    Raises:
        ConfigError: the model does not say which layer that is (``get_output_embeddings()``
            of Hugging Face models).
    """
    inner = unwrap(model)
    get = getattr(inner, "get_output_embeddings", None)
    layer = get() if callable(get) else None
    if not isinstance(layer, nn.Module):
        raise ConfigError(
            f"chunk_tokens needs a model whose output layer is known (a Hugging Face causal LM, "
            f"get_output_embeddings()); {type(inner).__name__} has none: leave chunk_tokens "
            "unset for it"
        )
    return layer


@contextmanager
def _layer_skipped(layer: nn.Module) -> Iterator[None]:
    """While active, ``layer`` computes nothing and returns its own input.

    Its (empty) output is added to that input as a zero (``+ output.sum()``), so the layer
    stays in the forward graph: a wrapper that looks for parameters the forward did not use
    (``DistributedDataParallel(find_unused_parameters=True)``) then does not mark its
    parameters done before the chunked loss gives them their gradients."""
    kept: list[torch.Tensor] = []

    def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        kept.append(hidden)
        empty = hidden[..., :0, :] if hidden.dim() > 2 else hidden[:0]
        return (empty, *args[1:])

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor:
        return kept.pop() + output.sum()

    handles = [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def hidden_states(model: nn.Module, task: Task, batch: Mapping[str, Any]) -> torch.Tensor:
    """The last hidden states at the task's logits positions (``[N, L−1, H]`` for a causal
    LM), i.e. what :func:`output_layer` maps to ``task.logits(model, batch)``; with the graph
    when gradients are enabled. The output layer does not run."""
    with _layer_skipped(output_layer(model)):
        return task.logits(model, batch)


@torch.no_grad()
def check_output_layer(model: nn.Module, task: Task, batch: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` unless the output layer applied to :func:`hidden_states`
    gives the model's own logits, on the first sequence of ``batch`` (eval mode, float32 as
    the model runs; its train/eval mode is restored)."""
    inner = unwrap(model)
    layer = output_layer(inner)
    was_training = inner.training
    inner.eval()
    first = {k: v[:1] if isinstance(v, torch.Tensor) and v.dim() else v for k, v in batch.items()}
    try:
        with torch.autocast(next(inner.parameters()).device.type, enabled=False):
            want = task.logits(inner, first).float()
            got = layer(hidden_states(inner, task, first)).float()
    finally:
        inner.train(was_training)
    scale = want.abs().max().clamp_min(1.0)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * scale):
        raise ConfigError(
            f"chunk_tokens: {type(inner).__name__}'s logits are not its output layer applied "
            "to its last hidden states (it transforms them after that layer, e.g. soft-capping "
            "or scaling); leave chunk_tokens unset for this model"
        )


ChunkLoss = Callable[..., tuple[torch.Tensor, ...]]
"""``loss(logits, *extras) -> (sum, ...)``: scalar sums over a chunk's positions."""


def chunked(
    layer: nn.Module, hidden: torch.Tensor, chunk: int, loss: ChunkLoss, *extras: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    r"""Sums over chunks of positions of a loss of ``layer``'s logits, never holding more than
    one chunk's logits.

    .. math::
        \Big(\sum_c \ell_j\big(\text{layer}(h_c), e_c\big)\Big)_j, \qquad
        h_c = \text{hidden}[c \cdot n : (c+1) \cdot n]

    Forward: each chunk's logits and loss, without a graph. Backward: each chunk again, with
    its graph, one at a time; the gradients of ``hidden`` and of ``layer``'s parameters are
    accumulated over the chunks and handed back through one autograd node, so each parameter
    receives one gradient per backward pass (as ``DistributedDataParallel`` requires). The
    surrounding autocast, if any, applies in both passes.

    Args:
        layer: the output layer (its parameters receive gradients).
        hidden: ``[T, H]`` rows, e.g. the labelled positions' last hidden states.
        chunk: rows per chunk, >= 1.
        loss: ``loss(logits [n, V], *extras_chunk)`` returning a tuple of scalar sums.
        extras: tensors with ``T`` rows, sliced with ``hidden`` (targets, a teacher's rows);
            constants (no gradient).

    Returns:
        The tuple of sums over all ``T`` rows (``T`` must be >= 1).
    """
    named = list(layer.named_parameters())
    names, params = tuple(n for n, _ in named), tuple(p for _, p in named)
    return _Chunked.apply(layer, names, loss, chunk, len(extras), hidden, *extras, *params)


def _parts(total: int, chunk: int) -> Iterator[slice]:
    return (slice(start, start + chunk) for start in range(0, total, chunk))


class _Chunked(torch.autograd.Function):
    """See :func:`chunked`."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, layer: nn.Module, names: tuple[str, ...], loss: ChunkLoss, chunk: int,
        n_extras: int, hidden: torch.Tensor, *tensors: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        extras, params = tensors[:n_extras], tensors[n_extras:]
        device = hidden.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.layer, ctx.names, ctx.loss = layer, names, loss
        ctx.chunk, ctx.n_extras = chunk, n_extras
        ctx.save_for_backward(hidden, *tensors)
        sums: tuple[torch.Tensor, ...] | None = None
        for part in _parts(hidden.shape[0], chunk):
            logits = functional_call(layer, dict(zip(names, params, strict=True)), (hidden[part],))
            found = loss(logits, *(x[part] for x in extras))
            sums = found if sums is None else tuple(a + b for a, b in zip(sums, found, strict=True))
        if sums is None:
            raise ValueError("chunked needs at least one row of hidden states, got 0")
        return sums

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        hidden, *tensors = ctx.saved_tensors
        extras, params = tensors[: ctx.n_extras], tensors[ctx.n_extras :]
        want_hidden = ctx.needs_input_grad[5]
        want = ctx.needs_input_grad[6 + ctx.n_extras :]
        leaves = [p.detach().requires_grad_(w) for p, w in zip(params, want, strict=True)]
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_params = [torch.zeros_like(p) if p.requires_grad else None for p in leaves]
        device, enabled, dtype = ctx.autocast
        for part in _parts(hidden.shape[0], ctx.chunk):
            h = hidden[part].detach().requires_grad_(want_hidden)
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                logits = functional_call(ctx.layer, dict(zip(ctx.names, leaves, strict=True)), (h,))
                found = ctx.loss(logits, *(x[part] for x in extras))
                total = sum(
                    (v * g for v, g in zip(found, grads, strict=True) if g is not None),
                    start=torch.zeros((), device=hidden.device),
                )
            inputs = ([h] if want_hidden else []) + [p for p in leaves if p.requires_grad]
            if not inputs or not total.requires_grad:
                continue
            found_grads = list(torch.autograd.grad(total, inputs, allow_unused=True))
            if want_hidden:
                g = found_grads.pop(0)
                if g is not None:
                    grad_hidden[part] = g
            for i, p in enumerate(leaves):
                if p.requires_grad:
                    g = found_grads.pop(0)
                    if g is not None:
                        grad_params[i] += g
        return (None, None, None, None, None, grad_hidden, *([None] * ctx.n_extras), *grad_params)
