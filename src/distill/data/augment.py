"""Training-time augmentation on tensors (no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["AUGMENTATIONS", "standard_augment"]

#: Values accepted by ``load_data(augment=...)``.
AUGMENTATIONS = ("none", "standard")


def standard_augment(
    img: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    fill: float | Sequence[float] | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Random crop with padding, then a random horizontal flip.

    The image ``[C, H, W]`` (any leading dimensions share one crop and flip) is padded by
    ``max(1, H // 8)`` rows and ``max(1, W // 8)`` columns on every side with ``fill`` (one value,
    or one per channel), an ``H × W`` window is cut at a uniformly random offset, and the result
    is mirrored left-right with probability 0.5. Returns a new tensor of the same shape.

    Randomness comes from ``generator`` when given, otherwise from torch's global RNG, so
    ``torch.manual_seed`` (or reseeding the generator) reproduces the same view. Exactly one
    draw of three uniforms is made per call.

    For normalised images, pass the normalised value of black, ``(0 - mean) / std``, as ``fill``.
    """
    height, width = img.shape[-2], img.shape[-1]
    pad_h, pad_w = max(1, height // 8), max(1, width // 8)
    u_row, u_col, u_flip = torch.rand(3, generator=generator).tolist()
    # Shift of the crop window relative to the unpadded image, in [-pad, pad].
    dy = min(int(u_row * (2 * pad_h + 1)), 2 * pad_h) - pad_h
    dx = min(int(u_col * (2 * pad_w + 1)), 2 * pad_w) - pad_w

    fill_t = torch.as_tensor(fill, dtype=img.dtype, device=img.device)
    if fill_t.dim() == 1:
        fill_t = fill_t.view(-1, 1, 1)
    out = fill_t.expand(img.shape).clone()
    # out[i, j] = img[i + dy, j + dx] wherever that source pixel exists; padding elsewhere.
    out[..., max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = img[
        ..., max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)
    ]
    if u_flip < 0.5:
        out = out.flip(-1)
    return out
