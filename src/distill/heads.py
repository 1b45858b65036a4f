"""A model's last hidden states, without its output layer: for losses computed chunk by chunk.

A language model's logits ``[N, L, V]`` are the largest tensor of a step, and all of them come
from one output layer (``lm_head``) applied to the last hidden states ``[N, L, H]``. A loss
that applies that layer itself, a few hundred tokens at a time, never needs them all at once.
:func:`hidden_states` runs the model as usual — through its own ``forward``, so wrappers such
as ``DistributedDataParallel`` see a normal forward — with two hooks on the output layer: a
pre-hook keeps the layer's input and hands the layer an empty sequence (so it computes
nothing), and a forward hook makes that input the model's "logits". The task then picks the
positions as it picks logits (the causal shift), so::

    hidden = hidden_states(model, task, batch)     # [N, L−1, H], with the graph
    logits = output_layer(model)(hidden[mask][:256])   # a chunk's logits

Supported models: those whose logits are ``output_layer(model)(last hidden states)`` with
nothing after it, and whose output layer is known: Hugging Face causal LMs
(``get_output_embeddings()``, e.g. llama, qwen2, mistral, gpt2). :func:`check_output_layer`
verifies it once per model on one sequence (a model that post-processes its logits, such as
Gemma 2's soft-capping, is refused with a message).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

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
    """While active, ``layer`` computes nothing and returns its own input."""
    kept: list[torch.Tensor] = []

    def before(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        kept.append(hidden)
        empty = hidden[..., :0, :] if hidden.dim() > 2 else hidden[:0]
        return (empty, *args[1:])

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor:
        return kept.pop()

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
