"""torchvision classification models as a model source (``arch: torchvision:NAME``); nothing is
downloaded.

```python
from distill.models import create
model = create("torchvision:resnet18", num_classes=10, in_channels=1)
model = create("torchvision:mobilenet_v3_small", num_classes=10, weights="mnv3.pth")
```

Names are those of ``torchvision.models.list_models(module=torchvision.models)`` (the image
classifiers). Options: ``num_classes``, ``in_channels`` (a run offers both from its data),
``weights: PATH`` (safetensors or a state dict, loaded with ``weights_only=True``),
``input_mean``/``input_std`` (the normalisation the weights were trained with; by default that
of the architecture's torchvision weights, ImageNet's, when ``weights`` are given), and any
other keyword argument of the model's builder (``dropout``, ``stochastic_depth_prob``, ...).
torchvision's own ``weights=`` (downloads) is not an option: pretrained weights come only from
a local file, through ``weights``.

``in_channels`` other than 3: torchvision models are built for RGB, so the first convolution
(the first ``nn.Conv2d`` in module order: ``conv1`` for ResNets, ``features.0.0`` for
MobileNets and EfficientNets) is rebuilt with ``in_channels`` inputs, its other settings kept;
its initial weight is the model's own RGB one adapted as pretrained stems are (summed over RGB
for one channel; repeated and scaled otherwise, see
:func:`~distill.models.weights.adapt_first_conv`), and a three-channel weight in ``weights``
is adapted the same way. Layers are tapped by their torchvision names (``layer3``,
``features.6``; ``distill layers torchvision:NAME`` lists them).

torchvision is an optional dependency, imported only when a model is made:
``pip install 'distill[vision]'``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError, closest
from distill.models.normalization import IMAGENET_MEAN, IMAGENET_STD, set_input_normalization
from distill.models.weights import adapt_first_conv, load_weights

__all__ = ["create_torchvision", "first_conv", "import_torchvision"]

INSTALL = "pip install 'distill[vision]'"

#: Builders with auxiliary heads, which then return a tuple in training mode: off by default.
AUX_LOGITS = ("googlenet", "inception_v3")


def import_torchvision() -> Any:
    """The torchvision module, or a :class:`ConfigError` saying which extra installs it."""
    try:
        import torchvision
        import torchvision.models
    except ImportError:
        raise ConfigError(
            "torchvision: models need the torchvision package, which is not installed; run "
            f"`{INSTALL}`"
        ) from None
    except RuntimeError as exc:  # a torchvision built for another torch ("operator ... does
        text = " ".join(str(exc).split())[:200]  # not exist")
        raise ConfigError(
            f"torchvision does not load beside torch {torch.__version__} ({text}); install "
            "matching builds, e.g. `pip install torch==2.14.1 torchvision==0.29.1`"
        ) from None
    return torchvision


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The name and module of ``model``'s first ``nn.Conv2d`` in module order, or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def _set_in_channels(model: nn.Module, arch: str, in_channels: int) -> None:
    found = first_conv(model)
    if found is None:
        raise ConfigError(f"{arch!r} has no convolution whose input channels could be changed")
    name, conv = found
    if conv.groups != 1:
        raise ConfigError(f"{arch!r}: cannot change the input channels of its grouped first conv")
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        replacement.weight.copy_(adapt_first_conv(conv.weight, in_channels))
        if conv.bias is not None:
            replacement.bias.copy_(conv.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, replacement)


def _weights_normalization(torchvision: Any, name: str) -> tuple[list[float], list[float]]:
    """Mean and std of the transforms of ``name``'s torchvision weights (ImageNet's if it has
    none that say)."""
    try:
        enum = torchvision.models.get_model_weights(name)
        transforms = next(iter(enum)).transforms()
        return list(transforms.mean), list(transforms.std)
    except Exception:  # no weights for this builder, or transforms without mean/std
        return list(IMAGENET_MEAN), list(IMAGENET_STD)


def create_torchvision(
    name: str,
    *,
    task: str = "classification",
    num_classes: int | None = None,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
    **options: Any,
) -> nn.Module:
    """The torchvision classifier ``name``: ``[N, in_channels, H, W]`` -> logits
    ``[N, num_classes]``.

    Weights are drawn from torch's RNG (``torch.manual_seed`` beforehand makes them
    reproducible), then replaced by those in ``weights`` when given. With ``weights``, the model
    carries ``input_mean``/``input_std`` (those given, else its torchvision weights'
    normalisation; for one input channel, the mean of the three values each), so that a
    teacher's inputs are re-normalised when the data's differ.

    Raises:
        ConfigError: torchvision not installed (or built for another torch), an unknown name
            (with the closest ones), a task other than ``classification``, ``weights=`` given
            as a builder option, an option the builder rejects, or weights that do not fit
            (which keys differ).
    """
    arch = f"torchvision:{name}"
    if task != "classification":
        raise ConfigError(f"{arch!r} is an image classifier, but the task is {task!r}")
    if "pretrained" in options or "progress" in options:
        raise ConfigError(
            f"{arch!r}: option {'pretrained' if 'pretrained' in options else 'progress'!r} is "
            "not accepted: pretrained weights are never downloaded; give a local file with "
            "weights: PATH"
        )
    for field, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{arch!r}: {field} must be an integer, got {value!r}")
        if value is not None and value < 1:
            raise ConfigError(f"{arch!r}: {field} must be >= 1, got {value!r}")
    torchvision = import_torchvision()
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        near = closest(str(name), known, n=5)
        hint = f"; closest names: {', '.join(near)}" if near else ""
        raise ConfigError(
            f"unknown torchvision classifier {name!r}{hint} (all {len(known)}: "
            "torchvision.models.list_models(module=torchvision.models))"
        )
    kwargs = dict(options)
    if name in AUX_LOGITS:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ConfigError(
            f"{arch!r}: torchvision cannot build it: {type(exc).__name__}: {text}"
        ) from None
    if in_channels != 3:
        _set_in_channels(model, arch, in_channels)
    if weights is not None:
        found = first_conv(model)
        load_weights(model, weights, arch, first_conv=found[0] if found else None)
    mean, std = input_mean, input_std
    if (mean is None) != (std is None):
        raise ConfigError(f"{arch!r}: give both input_mean and input_std, or neither")
    if mean is None and weights is not None:
        mean, std = _weights_normalization(torchvision, name)
        if in_channels == 1:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        elif len(mean) != in_channels:
            mean = std = None
    if mean is not None and std is not None:
        set_input_normalization(model, mean, std)
    model.arch = arch
    return model
