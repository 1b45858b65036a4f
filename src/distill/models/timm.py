"""timm image models as a model source (``arch: timm:NAME``); nothing is downloaded.

```python
from distill.models import create
model = create("timm:resnet18", num_classes=10, in_channels=1)          # new, random weights
model = create("timm:convnext_atto", num_classes=10, weights="convnext.safetensors")
```

Options: ``num_classes`` and ``in_channels`` (timm's ``in_chans``; a run offers both from its
data), ``weights: PATH`` (safetensors or a state dict, loaded with ``weights_only=True``),
``input_mean``/``input_std`` (the normalisation the weights were trained with; by default the
model's ``pretrained_cfg`` mean/std when ``weights`` are given), and any other keyword argument
of ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...). ``pretrained`` is not an
option: pretrained weights come only from a local file, through ``weights``. Layers are tapped by
their timm names (``layer3``, ``stages.2``; ``distill layers timm:NAME`` lists them).

timm is an optional dependency, imported only when a model is made:
``pip install 'distill[vision]'``.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from distill.errors import ConfigError, closest
from distill.models.normalization import set_input_normalization
from distill.models.weights import load_weights

__all__ = ["REFUSED", "create_timm", "import_timm"]

INSTALL = "pip install 'distill[vision]'"

#: timm.create_model arguments this source refuses, with what to do instead.
REFUSED = {
    "pretrained": "pretrained weights are never downloaded; give a local file with weights: PATH",
    "pretrained_cfg": "give weights: PATH, and input_mean/input_std for its normalisation",
    "pretrained_cfg_overlay": "give weights: PATH, and input_mean/input_std for its normalisation",
    "checkpoint_path": "use weights: PATH (read with weights_only=True)",
    "in_chans": "use in_channels",
}


def import_timm() -> Any:
    """The timm module, or a :class:`ConfigError` saying which extra installs it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"timm: models need the timm package, which is not installed; run `{INSTALL}`"
        ) from None
    return timm


def create_timm(
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
    """The timm model ``name`` (``resnet18``, ``convnext_atto``, ``resnet18.a1_in1k``, ...):
    ``[N, in_channels, H, W]`` -> logits ``[N, num_classes]``.

    Weights are drawn from torch's RNG (``torch.manual_seed`` beforehand makes them
    reproducible), then replaced by those in ``weights`` when given. A pretrained file with
    three-channel stem weights fits a model with ``in_channels`` != 3: the first convolution's
    weight is adapted (summed over RGB for one channel; see
    :func:`~distill.models.weights.adapt_first_conv`).

    With ``weights``, the model carries ``input_mean``/``input_std``: those given, else its
    ``pretrained_cfg`` mean/std (for one input channel, the mean of the three values each).
    A teacher whose normalisation differs from the data's has its inputs re-normalised
    (:mod:`distill.models.normalization`).

    Raises:
        ConfigError: timm not installed, an unknown name (with the closest ones), a task other
            than ``classification``, a refused option (:data:`REFUSED`), an option timm
            rejects, or weights that do not fit (which keys differ).
    """
    arch = f"timm:{name}"
    if task != "classification":
        raise ConfigError(f"{arch!r} is an image classifier, but the task is {task!r}")
    for key in options:
        if key in REFUSED:
            raise ConfigError(f"{arch!r}: option {key!r} is not accepted: {REFUSED[key]}")
    for field, value, low in (("num_classes", num_classes, 1), ("in_channels", in_channels, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{arch!r}: {field} must be an integer, got {value!r}")
        if value is not None and value < low:
            raise ConfigError(f"{arch!r}: {field} must be >= {low}, got {value!r}")
    timm = import_timm()
    known = timm.list_models()
    if not isinstance(name, str) or not timm.is_model(name):
        near = closest(str(name), known, n=5)
        hint = f"; closest names: {', '.join(near)}" if near else ""
        raise ConfigError(
            f"unknown timm model {name!r}{hint} (timm.list_models() lists all {len(known)})"
        )
    kwargs = {"in_chans": in_channels, **options}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ConfigError(f"{arch!r}: timm cannot build it: {type(exc).__name__}: {text}") from None
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if weights is not None:
        load_weights(model, weights, arch, first_conv=cfg.get("first_conv"))
    mean, std = input_mean, input_std
    if (mean is None) != (std is None):
        raise ConfigError(f"{arch!r}: give both input_mean and input_std, or neither")
    if mean is None and weights is not None and cfg.get("mean") and cfg.get("std"):
        mean, std = list(cfg["mean"]), list(cfg["std"])
        if in_channels == 1 and len(mean) > 1:
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        elif len(mean) != in_channels:
            mean = std = None  # no known normalisation for this channel count
    if mean is not None and std is not None:
        set_input_normalization(model, mean, std)
    model.arch = arch
    return model
