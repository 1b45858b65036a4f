"""Our model zoo: image classifiers by bare name (the source without a prefix).

```python
from distill.models import create
model = create("resnet20", num_classes=10, in_channels=1)  # [N, 1, H, W] -> [N, 10]
```

Names: ``cnn-2`` ... ``cnn-10`` (TAKD plain CNNs), ``resnet8`` ... ``resnet110``,
``resnet8x4``, ``resnet32x4`` (CIFAR ResNets) and ``wrn-D-K`` (wide ResNets, parsed from the
name), plus any architecture registered with :func:`register`. Every zoo model has children
``stem``, ``stages`` (``stages.0``, ``stages.1``, ...) and ``head`` (ending in ``head.fc``),
and accepts any input of at least 8×8 pixels. Architectures come in *families* of one
design at several sizes (:func:`family`), from which TAKD picks assistants.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from functools import partial

from torch import nn

from distill.errors import ConfigError, closest, did_you_mean
from distill.models.cnn import CNN_SECTIONS, PlainCNN
from distill.models.resnet import RESNETS, CifarResNet
from distill.models.wrn import WRN_HELP, WideResNet, check_wrn, parse_wrn

ModelFactory = Callable[[int, int], nn.Module]
"""``factory(num_classes, in_channels) -> nn.Module``."""

MODELS: dict[str, ModelFactory] = {}
"""Architecture name -> factory. ``wrn-D-K`` names are parsed in :func:`create_zoo` instead."""

FAMILIES: dict[str, str] = {}
"""Architecture name -> its family (architectures of one design at several sizes)."""

for _depth, _sections in CNN_SECTIONS.items():
    MODELS[f"cnn-{_depth}"] = partial(PlainCNN, sections=_sections)
    FAMILIES[f"cnn-{_depth}"] = "cnn"
for _name, (_depth, _stem, _widths) in RESNETS.items():
    MODELS[_name] = partial(CifarResNet, depth=_depth, stem_width=_stem, widths=_widths)
    FAMILIES[_name] = f"resnet-stem{_stem}"


def register(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding ``factory(num_classes, in_channels) -> nn.Module`` to :data:`MODELS`
    (a family of its own).

    ```python
    @register("my-net")
    def my_net(num_classes: int, in_channels: int) -> nn.Module: ...
    ```
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a model name must be a non-empty string, got {name!r}")
    if ":" in name:
        raise ConfigError(
            f"a zoo model name cannot contain ':' (it would read as a source prefix), got {name!r}"
        )

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ConfigError(f"model architecture {name!r} is already registered")
        MODELS[name] = factory
        FAMILIES[name] = name
        return factory

    return decorator


def _natural_key(name: str) -> list[str | int]:
    # So that cnn-10 sorts after cnn-8 and resnet110 after resnet56.
    parts = re.split(r"(\d+)", name)
    return [int(part) if part.isdigit() else part for part in parts]


def available() -> list[str]:
    """Sorted architecture names, plus the ``wrn-D-K`` pattern described in words."""
    return sorted([*MODELS, WRN_HELP], key=_natural_key)


def family(name: str, larger: str | None = None) -> list[str]:
    """The zoo architectures of ``name``'s family, ``name`` included.

    For wide ResNets, every ``wrn-D-K`` with depth 10, 16, ... up to 40 (or ``larger``'s
    depth) and widen factor 1 up to 2 (or ``larger``'s); for a registered architecture, only
    itself.
    """
    parsed = parse_wrn(name)
    if parsed is not None:
        sizes = [parsed, *([p] if larger and (p := parse_wrn(larger)) else [])]
        max_depth = max(40, *(d for d, _ in sizes))
        max_width = max(2, *(k for _, k in sizes))
        return [
            f"wrn-{depth}-{width}"
            for depth in range(10, max_depth + 1, 6)
            for width in range(1, max_width + 1)
        ]
    if name not in FAMILIES:
        return [name]
    return [other for other, group in FAMILIES.items() if group == FAMILIES[name]]


def _check_positive_int(field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum}, got {value!r}")


def _suggestion(name: str) -> str:
    """A "did you mean" hint; ties go to the name sharing the longest prefix.

    difflib alone scores resnet20 and resnet32 equally for "resnet21" and then prefers the
    alphabetically later one, whereas a typo usually keeps the start of a name.
    """
    typed = name.lower()
    candidates = closest(typed, [*MODELS, "wrn-16-2", "wrn-40-2"], n=5)
    if not candidates:
        return ""
    ratio = partial(difflib.SequenceMatcher, None, typed)
    best = max(
        candidates,
        key=lambda c: (ratio(c).ratio(), len(os.path.commonprefix([typed, c]))),
    )
    return did_you_mean(typed, [best])


def create_zoo(
    name: str, *, task: str = "classification", num_classes: int = 10, in_channels: int = 3
) -> nn.Module:
    """Build the zoo architecture ``name``: ``[N, in_channels, H, W]`` -> ``[N, num_classes]``.

    Weights depend only on torch's RNG, so ``torch.manual_seed`` beforehand makes them
    reproducible. Unknown names, a bad ``wrn`` depth, ``num_classes < 2``,
    ``in_channels < 1`` or a task other than ``classification`` raise :class:`ConfigError`.
    """
    if task != "classification":
        raise ConfigError(
            f"zoo model {name!r} is an image classifier, but the task is {task!r}; use a model "
            "of another source (e.g. hf: for a causal LM)"
        )
    _check_positive_int("num_classes", num_classes, 2)
    _check_positive_int("in_channels", in_channels, 1)
    if name in MODELS:
        return MODELS[name](num_classes, in_channels)
    if (parsed := parse_wrn(name)) is not None:
        depth, widen_factor = parsed
        try:
            check_wrn(depth, widen_factor)
        except ConfigError as error:
            raise ConfigError(f"model architecture {name!r}: {error}") from None
        return WideResNet(num_classes, in_channels, depth=depth, widen_factor=widen_factor)
    if name.lower().startswith("wrn"):
        raise ConfigError(
            f"unknown model architecture {name!r}: wide resnets are named wrn-D-K with depth D "
            f"= 6n+4 and widen factor K >= 1 (e.g. wrn-16-2, wrn-40-2)"
        )
    if re.fullmatch(r"cnn-\d+", name):
        depths = ", ".join(str(depth) for depth in CNN_SECTIONS)
        raise ConfigError(
            f"unknown model architecture {name!r}: plain CNNs are cnn-N with N (the number of "
            f"conv layers) one of {depths}"
        )
    raise ConfigError(
        f"unknown model architecture {name!r}{_suggestion(name)}; available: "
        f"{', '.join(available())}"
    )
