"""Small trainable layers that map a student feature to the shape of a teacher feature.

An adapter is sized from the two features' shapes, which one probe forward on a sample batch
gives (:func:`distill.taps.probe`)::

    s = probe(student, "stages.1", x)["stages.1"]       # [N, 32, 14, 14]
    t = probe(teacher, "stages.2", x)["stages.2"]       # [N, 64, 7, 7]
    regressor = build_adapter(s.shape, t.shape)          # stride-2 3×3 conv + BN
    regressor(s).shape == t.shape

Rules (:func:`build_adapter`):

- ``[N, C, H, W]`` (conv maps), the FitNets regressor: a 1×1 conv when the sizes match; a
  stride-2 3×3 conv when the student map is twice the teacher's; a stride-2 transposed 4×4 conv
  when it is half; otherwise a conv of kernel ``1 + H_s − H_t`` (by ``1 + W_s − W_t``) when the
  student map is larger, or a transposed conv of kernel ``1 + H_t − H_s`` when it is smaller.
  Then BatchNorm and, optionally, ReLU.
- ``[N, L, D]`` (tokens, same ``L``) and ``[N, D]`` (vectors): a linear projection
  ``D_s -> D_t``.

Shapes no adapter can match (other ranks, batch sizes or sequence lengths, a map larger in one
direction and smaller in the other) raise :class:`~distill.errors.ConfigError` showing both.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import ConfigError

__all__ = ["build_adapter", "conv_adapter", "linear_adapter"]


def _shape_error(student: Sequence[int], teacher: Sequence[int], why: str) -> ConfigError:
    return ConfigError(
        f"no adapter maps a student feature of shape {list(student)} to a teacher feature of "
        f"shape {list(teacher)}: {why}"
    )


def conv_adapter(
    in_channels: int,
    out_channels: int,
    student_size: tuple[int, int],
    teacher_size: tuple[int, int],
    *,
    relu: bool = False,
) -> nn.Sequential:
    """The FitNets regressor ``[N, in_channels, H_s, W_s] -> [N, out_channels, H_t, W_t]``:
    conv (chosen by the rules in the module docstring), BatchNorm2d, optional ReLU.

    Raises:
        ConfigError: the student map is larger than the teacher's in one direction and smaller
            in the other.
    """
    (hs, ws), (ht, wt) = student_size, teacher_size
    conv: nn.Module
    if (hs, ws) == (ht, wt):
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    elif (hs, ws) == (2 * ht, 2 * wt):
        conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
    elif (2 * hs, 2 * ws) == (ht, wt):
        # (H - 1)·2 - 2·1 + 4 = 2H exactly.
        conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
    elif hs >= ht and ws >= wt:
        conv = nn.Conv2d(in_channels, out_channels, (1 + hs - ht, 1 + ws - wt), bias=False)
    elif hs <= ht and ws <= wt:
        conv = nn.ConvTranspose2d(in_channels, out_channels, (1 + ht - hs, 1 + wt - ws), bias=False)
    else:
        raise _shape_error(
            (in_channels, hs, ws),
            (out_channels, ht, wt),
            "the student map is larger than the teacher's in one direction and smaller in the "
            "other; tap layers whose maps are both larger, or both smaller",
        )
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_adapter(in_features: int, out_features: int) -> nn.Linear:
    """A linear projection of the last dimension, ``[..., D_s] -> [..., D_t]``."""
    return nn.Linear(in_features, out_features)


def build_adapter(
    student_shape: Sequence[int], teacher_shape: Sequence[int], *, relu: bool = False
) -> nn.Module:
    """An adapter mapping features of ``student_shape`` to ``teacher_shape``.

    Args:
        student_shape: ``[N, C, H, W]``, ``[N, L, D]`` or ``[N, D]`` (e.g. ``feature.shape``).
        teacher_shape: the same rank and batch size (and ``L``) as ``student_shape``.
        relu: end a conv adapter with ReLU (for teacher features that follow a ReLU).

    Returns:
        For conv maps :func:`conv_adapter`; for tokens and vectors :func:`linear_adapter`.

    Raises:
        ConfigError: no adapter can match the shapes; the message shows both.
    """
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if len(s) != len(t):
        raise _shape_error(s, t, "they differ in rank; tap layers of the same kind")
    if len(s) not in (2, 3, 4):
        raise _shape_error(
            s, t, "adapters handle [N, C, H, W] maps, [N, L, D] tokens and [N, D] vectors"
        )
    if s[0] != t[0]:
        raise _shape_error(s, t, "the batch sizes differ; probe both models on the same batch")
    if len(s) == 4:
        return conv_adapter(s[1], t[1], (s[2], s[3]), (t[2], t[3]), relu=relu)
    if len(s) == 3 and s[1] != t[1]:
        raise _shape_error(
            s, t, "the sequence lengths differ; tap layers that keep one vector per token"
        )
    return linear_adapter(s[-1], t[-1])
