"""Models by name: one registry of *sources*, chosen by the prefix of the name.

```python
from distill.models import create
model = create("resnet20", num_classes=10, in_channels=1)   # our zoo: a bare name
```

``create(arch, **options)`` splits ``arch`` at its first ``:``: a registered prefix picks the
source (``hf:``, ``timm:``, ``torchvision:``) and the rest is the name within it; a name without
a prefix is a zoo architecture (:mod:`distill.models.zoo`). A source is one function
``source(name, **options) -> nn.Module``; add one with :func:`register_source`. The ``hf:``,
``timm:`` and ``torchvision:`` sources import their packages only when a model is made
(``pip install 'distill[vision]'`` for the last two).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from distill.errors import ConfigError
from distill.models.cnn import PlainCNN
from distill.models.hf import create_hf, save_hf
from distill.models.normalization import input_normalization, set_input_normalization
from distill.models.resnet import CifarResNet
from distill.models.saving import load_model_weights, save_model, save_safetensors
from distill.models.timm import create_timm
from distill.models.torchvision import create_torchvision
from distill.models.wrn import WideResNet
from distill.models.zoo import MODELS, available, create_zoo, family, register

__all__ = [
    "MODELS",
    "SOURCES",
    "CifarResNet",
    "PlainCNN",
    "Source",
    "WideResNet",
    "available",
    "count_parameters",
    "create",
    "family",
    "input_normalization",
    "load_model_weights",
    "register",
    "register_source",
    "save_hf",
    "save_model",
    "save_safetensors",
    "save_trained",
    "set_input_normalization",
]

Source = Callable[..., nn.Module]
"""``source(name, **options) -> nn.Module``: builds the model ``name`` of one source."""

SOURCES: dict[str, Source] = {"": create_zoo, "hf": create_hf}
"""Prefix -> source. The empty prefix is our zoo (names without a ``prefix:``)."""


Saver = Callable[..., None]
"""``saver(model, directory, *, tokenizer=None, **meta)``: writes a trained model in its
ecosystem's format."""

SAVERS: dict[str, Saver] = {
    "": lambda model, directory, *, tokenizer=None, **meta: save_safetensors(
        model, directory, **meta
    ),
    "hf": lambda model, directory, *, tokenizer=None, **meta: save_hf(model, directory, tokenizer),
}
"""Prefix -> how its trained models are saved (sources not listed: as the zoo's)."""


def save_trained(
    model: nn.Module, directory: str | Path, *, tokenizer: Any = None, **meta: Any
) -> None:
    """Write a trained model in its ecosystem's format: ``save_pretrained`` (plus the
    tokenizer) for ``hf:`` models, ``model.safetensors`` + ``config.json`` (``meta``) for the
    others. The folder is written whole or not at all."""
    arch = getattr(model, "arch", "")
    prefix = arch.partition(":")[0] if ":" in arch else ""
    SAVERS.get(prefix, SAVERS[""])(model, directory, tokenizer=tokenizer, **meta)


def register_source(prefix: str) -> Callable[[Source], Source]:
    """Decorator adding a source under ``prefix`` (used as ``arch: PREFIX:NAME``)."""
    if not prefix or not prefix.isidentifier():
        raise ConfigError(f"a source prefix must be a word such as 'timm', got {prefix!r}")

    def decorator(source: Source) -> Source:
        if prefix in SOURCES:
            raise ConfigError(f"model source {prefix!r} is already registered")
        SOURCES[prefix] = source
        return source

    return decorator


def create(arch: str, *, defaults: dict[str, Any] | None = None, **options: Any) -> nn.Module:
    """Build the model ``arch`` (``"resnet20"``, ``"hf:PATH"``, ...) with its source's
    ``options`` (for the zoo: ``num_classes``, ``in_channels``).

    ``defaults`` are options a source gets only if it names them as parameters and
    ``options`` does not set them: what a run knows from its data and task (``task``,
    ``num_classes``, ``in_channels``), offered to every source. The result carries
    ``model.arch = arch`` (checkpoints store it).

    Raises:
        ConfigError: an unknown prefix or architecture, or options the source rejects.
    """
    if not isinstance(arch, str):
        raise ConfigError(f"a model architecture name must be a string, got {arch!r}")
    prefix, sep, name = arch.partition(":")
    if not sep:
        prefix, name = "", arch
    elif prefix not in SOURCES:
        known = ", ".join(f"{p}:" for p in SOURCES if p) or "none"
        raise ConfigError(
            f"unknown model source {prefix + ':'!r} in {arch!r}; registered sources: {known} "
            "(a name without a prefix is a zoo architecture)"
        )
    source = SOURCES[prefix]
    named = inspect.signature(source).parameters
    taken = {k: v for k, v in (defaults or {}).items() if k in named and k not in options}
    options = {**taken, **options}
    try:
        inspect.signature(source).bind(name, **options)
    except TypeError as exc:
        raise ConfigError(f"model {arch!r}: {exc}") from None
    model = source(name, **options)
    model.arch = arch
    return model


register_source("timm")(create_timm)
register_source("torchvision")(create_torchvision)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, trainable and frozen alike (shared tensors counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())
