"""Adapters map student features to the teacher's shape (FitNets regressor rules)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.adapters import build_adapter
from distill.errors import ConfigError


@pytest.mark.parametrize(
    ("student_hw", "teacher_hw", "kind", "kernel", "stride"),
    [
        ((8, 8), (8, 8), nn.Conv2d, (1, 1), (1, 1)),  # ratio 1
        ((14, 14), (7, 7), nn.Conv2d, (3, 3), (2, 2)),  # ratio 2
        ((8, 6), (4, 3), nn.Conv2d, (3, 3), (2, 2)),  # ratio 2, not square
        ((7, 7), (14, 14), nn.ConvTranspose2d, (4, 4), (2, 2)),  # ratio 1/2
        ((7, 7), (4, 4), nn.Conv2d, (4, 4), (1, 1)),  # odd ratio: kernel 1 + 7 - 4
        ((9, 6), (4, 4), nn.Conv2d, (6, 3), (1, 1)),  # odd, per direction
        ((3, 3), (8, 8), nn.ConvTranspose2d, (6, 6), (1, 1)),  # odd, smaller student
    ],
)
def test_conv_adapter_reaches_teacher_shape(
    student_hw: tuple[int, int],
    teacher_hw: tuple[int, int],
    kind: type,
    kernel: tuple[int, int],
    stride: tuple[int, int],
) -> None:
    student = torch.randn(2, 5, *student_hw, requires_grad=True)
    teacher_shape = (2, 12, *teacher_hw)
    adapter = build_adapter(student.shape, teacher_shape)
    conv = adapter[0]
    assert type(conv) is kind
    assert conv.kernel_size == kernel and conv.stride == stride
    assert isinstance(adapter[1], nn.BatchNorm2d) and len(adapter) == 2
    out = adapter(student)
    assert out.shape == teacher_shape
    out.sum().backward()
    assert student.grad is not None


def test_relu_is_optional() -> None:
    adapter = build_adapter((2, 3, 4, 4), (2, 6, 4, 4), relu=True)
    assert isinstance(adapter[-1], nn.ReLU)
    assert adapter(torch.randn(2, 3, 4, 4)).min() >= 0


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [((4, 10, 32), (4, 10, 48)), ((4, 10, 48), (4, 10, 16)), ((4, 32), (4, 64))],
)
def test_token_and_vector_features_get_a_linear_projection(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]
) -> None:
    adapter = build_adapter(student_shape, teacher_shape)
    assert isinstance(adapter, nn.Linear)
    assert adapter(torch.randn(*student_shape)).shape == teacher_shape


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "why"),
    [
        ((2, 8, 4, 4), (2, 16), "rank"),
        ((2, 8, 4, 4), (3, 8, 4, 4), "batch"),
        ((2, 10, 32), (2, 12, 32), "sequence lengths"),
        ((2, 8, 8, 4), (2, 8, 4, 8), "larger than the teacher's in one direction"),
        ((2, 1, 2, 3, 4), (2, 1, 2, 3, 4), r"\[N, C, H, W\]"),
    ],
)
def test_impossible_shapes_show_both(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], why: str
) -> None:
    with pytest.raises(ConfigError, match=why) as error:
        build_adapter(student_shape, teacher_shape)
    message = str(error.value)
    assert str(list(student_shape)) in message or str(list(student_shape[1:])) in message
    assert str(list(teacher_shape)) in message or str(list(teacher_shape[1:])) in message
