"""Pretrained weights from a file, for the ``timm:`` and ``torchvision:`` sources.

``weights: PATH`` names a safetensors file (``.safetensors``) or a file written by
``torch.save`` holding a state dict, read with ``weights_only=True`` (no code runs). A state
dict may sit under a ``state_dict`` or ``model`` key (as training scripts save them), and a
``module.`` prefix (DistributedDataParallel) is dropped. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError
from distill.files import load_problem

__all__ = ["adapt_first_conv", "load_weights", "read_weights"]

_SHOWN = 3  # keys listed per kind of difference


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (safetensors or ``torch.save``), as CPU tensors.

    Raises:
        ConfigError: no such file, a file that cannot be read safely, or one holding no state
            dict; the message names the file.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"weights {file}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload: Any = load_file(str(file), device="cpu")
        else:
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except ImportError:
        raise ConfigError(
            f"weights {file}: reading safetensors files needs the safetensors package "
            "(`pip install safetensors`)"
        ) from None
    except Exception as exc:  # truncated, not a weights file, pickled code refused...
        raise ConfigError(
            f"weights {file}: cannot be read safely ({load_problem(exc)}); give a "
            "safetensors file or a state dict saved with torch.save"
        ) from None
    state = _state_dict(payload)
    if state is None:
        raise ConfigError(
            f"weights {file}: holds no state dict (a mapping of parameter names to tensors, "
            "possibly under a 'state_dict' or 'model' key)"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _state_dict(payload: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(payload, Mapping):
        return None
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload)
    for key in ("state_dict", "model"):
        inner = payload.get(key)
        if isinstance(inner, Mapping) and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return None


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weight ``[O, C, kh, kw]`` made to take ``in_channels`` inputs.

    One channel: the sum over the ``C`` channels (a grey image seen as ``C`` equal channels
    gives the same response). Otherwise the channels are repeated cyclically up to
    ``in_channels`` and scaled by ``C / in_channels`` (so a constant input keeps its response),
    as timm adapts pretrained stems.
    """
    channels = weight.shape[1]
    if in_channels == channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (channels / in_channels)


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str],
    arch: str,
    *,
    first_conv: str | None = None,
) -> None:
    """Load the weights in ``path`` into ``model`` (all of them, every shape as in the model).

    ``first_conv``: the name of the model's first convolution (``conv1``); when the file's
    weight for it has another number of input channels than the model's, it is adapted with
    :func:`adapt_first_conv` (pretrained RGB weights for a one-channel model).

    Raises:
        ConfigError: the file cannot be read (:func:`read_weights`) or holds the weights of
            another architecture; the one-line message lists the first few missing,
            unexpected and differently shaped keys.
    """
    state = read_weights(path)
    own = model.state_dict()
    if first_conv is not None:
        key = f"{first_conv}.weight"
        if key in state and key in own and state[key].dim() == 4 == own[key].dim():
            given, wanted = state[key].shape, own[key].shape
            if given[1] != wanted[1] and (given[0], *given[2:]) == (wanted[0], *wanted[2:]):
                state[key] = adapt_first_conv(state[key], wanted[1])
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {list(state[k].shape)} (model: {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
                parts.append(f"{label}: {', '.join(keys[:_SHOWN])}{more}")
        raise ConfigError(
            f"weights {Path(path)} are not weights of {arch!r} as built (another architecture, "
            f"number of classes or of input channels?): {'; '.join(parts)}"
        )
    model.load_state_dict(state)
