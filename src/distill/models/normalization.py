"""The input normalisation a model expects, and re-normalising a teacher's inputs to it.

Images reach every model of a run normalised with the data's per-channel constants
(``DataBundle.mean``/``std``). A pretrained model may have been trained on inputs normalised
otherwise: a timm model with its ``pretrained_cfg`` mean/std, a torchvision model with its
weights' transforms (ImageNet's). Such a model carries ``model.input_mean`` and
``model.input_std`` (one float per channel; set by the ``timm:`` and ``torchvision:`` sources
when ``weights`` are given, or by hand); when it teaches, its inputs are re-normalised from the
data's constants to its own, as timm's distillation task does::

    renorm = renormalizer(data.mean, data.std, teacher_model)   # None when nothing to do
    teacher = Teacher(teacher_model, "classification", renormalize=renorm)

A model trained (or loaded from a checkpoint) by a run learnt on the data's normalisation, so
the run forgets what it expected before (:func:`forget_input_normalization`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from distill.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Renormalize",
    "forget_input_normalization",
    "input_normalization",
    "renormalizer",
    "set_input_normalization",
]

#: ImageNet's per-channel constants (RGB), used by torchvision's weights and most of timm's.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def _floats(field: str, values: object) -> tuple[float, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{field} must be a list of numbers, one per channel; got {values!r}")
    out = []
    for value in values:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ConfigError(f"{field} must hold finite numbers, one per channel; got {values!r}")
        out.append(float(value))
    return tuple(out)


def set_input_normalization(
    model: nn.Module, mean: Sequence[float], std: Sequence[float]
) -> nn.Module:
    """Record on ``model`` that it expects inputs ``(x - mean) / std`` per channel, ``x`` in
    ``[0, 1]``; returns ``model``.

    Raises:
        ConfigError: ``mean`` and ``std`` are not lists of one length, or ``std`` has a value
            that is not positive.
    """
    mean, std = _floats("input_mean", mean), _floats("input_std", std)
    if len(mean) != len(std):
        raise ConfigError(
            f"input_mean and input_std need one value per channel each; got {len(mean)} and "
            f"{len(std)} values"
        )
    if any(s <= 0 for s in std):
        raise ConfigError(f"input_std must be positive in every channel; got {list(std)}")
    model.input_mean = mean
    model.input_std = std
    return model


def input_normalization(model: nn.Module) -> Stats | None:
    """``(mean, std)`` that ``model`` expects (see :func:`set_input_normalization`), or None."""
    mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def forget_input_normalization(model: nn.Module) -> None:
    """Drop what :func:`set_input_normalization` recorded: ``model`` now takes the data's."""
    for name in ("input_mean", "input_std"):
        if name in vars(model):
            delattr(model, name)


class Renormalize(nn.Module):
    """Re-normalise images from one per-channel normalisation to another.

    .. math::

        x_t = \\frac{(x \\cdot \\sigma_d + \\mu_d) - \\mu_t}{\\sigma_t}

    per channel: ``x`` normalised with the data's ``(mean_d, std_d)`` is taken back to pixel
    values, then normalised with the model's ``(mean_t, std_t)``.

    Args:
        data_mean, data_std: the normalisation the inputs have (``C`` floats each).
        model_mean, model_std: the one the model expects (``C`` floats each).

    Shapes: ``[N, C, H, W]`` (or any ``[..., C, H, W]``) in and out. Computed in float32; the
    result has the input's dtype.
    """

    def __init__(
        self,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        model_mean: Sequence[float],
        model_std: Sequence[float],
    ) -> None:
        super().__init__()
        stats = [tuple(float(v) for v in s) for s in (data_mean, data_std, model_mean, model_std)]
        if len({len(s) for s in stats}) != 1:
            raise ConfigError(
                f"re-normalising needs one value per channel everywhere; got data mean/std of "
                f"{len(stats[0])}/{len(stats[1])} and model mean/std of "
                f"{len(stats[2])}/{len(stats[3])} channels"
            )
        for name, values in zip(
            ("data_mean", "data_std", "model_mean", "model_std"), stats, strict=True
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[-3] != self.data_mean.shape[0]:
            raise ValueError(
                f"Renormalize expects images [..., {self.data_mean.shape[0]}, H, W]; got shape "
                f"{list(x.shape)}"
            )
        pixels = x.float() * self.data_std + self.data_mean
        return ((pixels - self.model_mean) / self.model_std).to(x.dtype)

    def describe(self) -> str:
        """The two normalisations in words, for logs and reports."""

        def fmt(t: torch.Tensor) -> str:
            return "(" + ", ".join(f"{v:.4g}" for v in t.flatten().tolist()) + ")"

        return (
            f"from the data's mean {fmt(self.data_mean)} std {fmt(self.data_std)} to the "
            f"model's mean {fmt(self.model_mean)} std {fmt(self.model_std)}"
        )

    def extra_repr(self) -> str:
        return self.describe()


def renormalizer(
    data_mean: Sequence[float] | None,
    data_std: Sequence[float] | None,
    model: nn.Module,
    *,
    tolerance: float = 1e-6,
) -> Renormalize | None:
    """The :class:`Renormalize` that takes the data's normalisation to ``model``'s, or None
    when ``model`` expects none in particular, the data's is unknown, or both agree within
    ``tolerance``.

    Raises:
        ConfigError: the model's constants have another number of channels than the data's.
    """
    expected = input_normalization(model)
    if expected is None or data_mean is None or data_std is None:
        return None
    model_mean, model_std = expected
    if len(model_mean) != len(data_mean) or len(model_std) != len(data_std):
        arch = getattr(model, "arch", type(model).__name__)
        raise ConfigError(
            f"model {arch!r} expects inputs of {len(model_mean)} channel(s) normalised with mean "
            f"{list(model_mean)}, but the data has {len(data_mean)}; set input_mean and "
            "input_std in the model's options to one value per data channel"
        )
    pairs = zip((*data_mean, *data_std), (*model_mean, *model_std), strict=True)
    if all(abs(float(a) - float(b)) <= tolerance for a, b in pairs):
        return None
    return Renormalize(data_mean, data_std, model_mean, model_std)
