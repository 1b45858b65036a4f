"""In-memory image datasets, the raw form a loader returns, and the bundle a run trains on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from distill.errors import ConfigError, DataError

__all__ = [
    "DataBundle",
    "RawData",
    "TensorImageDataset",
    "bundle_from_datasets",
    "check_labels",
    "normalise",
    "split_indices",
    "validate_val_fraction",
]


@dataclass
class RawData:
    """What a dataset loader returns: whole splits as tensors, before normalisation.

    Attributes:
        train_x: float32 ``[N, C, H, W]``, scaled to ``[0, 1]``.
        train_y: int64 ``[N]``, class indices in ``[0, num_classes)``.
        test_x: float32 ``[M, C, H, W]`` for an official test split, else ``None``.
        test_y: int64 ``[M]``, or ``None``.
        val_x, val_y: a validation split of the dataset's own (e.g. a ``val/`` folder), used
            as is instead of a share of the training images; ``None`` otherwise.
        num_classes: number of classes.
        mean, std: per-channel constants (``C`` floats each) used to normalise every split.
            ``None`` means "compute them from ``train_x``".
        default_val_fraction: share of the training images held out for validation when the
            caller does not choose one.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None = None
    test_y: torch.Tensor | None = None
    num_classes: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    default_val_fraction: float = 0.2
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None


@dataclass
class DataBundle:
    """The splits a run trains, validates and tests on.

    Every item is ``(image, label)``: image float32 ``[C, H, W]`` (normalised), label an int64
    scalar tensor. Only ``train`` is ever augmented. ``collate`` turns a list of dict items
    into a batch (``None``: PyTorch's default stacking). ``mean`` and ``std`` are the
    per-channel constants the images were normalised with (``(x - mean) / std`` for pixel
    values ``x`` in ``[0, 1]``), ``None`` when unknown (users' own datasets); a teacher that
    expects other constants has its inputs re-normalised from these.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    collate: Callable[[list[Any]], Any] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    #: What the items are (a task says which kind it needs).
    kind: ClassVar[str] = "images"


class TensorImageDataset(Dataset):
    """Images and labels held in memory.

    Args:
        images: float ``[N, C, H, W]``.
        labels: int64 ``[N]``.
        transform: applied to each ``[C, H, W]`` image as it is read (e.g. augmentation).

    Items are ``(image [C, H, W], label)`` with the label an int64 scalar tensor.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dim() != 4:
            raise DataError(f"images must have shape [N, C, H, W]; got shape {list(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"labels must have shape [{images.shape[0]}] to match the images; "
                f"got shape {list(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def validate_val_fraction(val_fraction: object) -> float:
    """Return ``val_fraction`` as a float, or raise :class:`ConfigError` unless it is in (0, 1)."""
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0.0 < val_fraction < 1.0
    ):
        raise ConfigError(
            f"val_fraction must be a number strictly between 0 and 1 (e.g. 0.1); "
            f"got {val_fraction!r}"
        )
    return float(val_fraction)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/validation split of ``range(n)``.

    Returns ``(train_indices, val_indices)``, both sorted int64 1-D tensors; validation gets
    ``ceil(n * val_fraction)`` indices (at least one, and at least one is left for training).
    """
    if n < 2:
        raise DataError(f"need at least 2 images to split off a validation set; got {n}")
    # round() first so that e.g. 500 * 0.2 never rounds up to 101 through float noise.
    n_val = min(max(math.ceil(round(n * val_fraction, 9)), 1), n - 1)
    generator = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=generator)
    val_idx, _ = order[:n_val].sort()
    train_idx, _ = order[n_val:].sort()
    return train_idx, val_idx


def _label_as_int(label: object, index: int, where: str) -> int:
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.is_floating_point() or label.is_complex():
            raise DataError(
                f"{where}: the label of item {index} must be one integer class index; "
                f"got a {label.dtype} tensor of shape {list(label.shape)}"
            )
        return int(label.item())
    if isinstance(label, int) and not isinstance(label, bool):
        return label
    if hasattr(label, "__index__"):  # numpy integers
        return int(label.__index__())  # type: ignore[union-attr]
    raise DataError(
        f"{where}: the label of item {index} must be an integer class index; got {label!r}"
    )


def _labels_of(dataset: Dataset, where: str) -> torch.Tensor:
    """All labels of ``dataset`` as int64 ``[N]``; reads tensors directly when it can."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
        if labels.dim() == 1 and not labels.is_floating_point():
            return labels.long()
    if isinstance(dataset, Subset):
        inner = dataset.dataset
        if isinstance(inner, TensorImageDataset | TensorDataset):
            return _labels_of(inner, where)[torch.as_tensor(list(dataset.indices))]
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        labels.append(_label_as_int(item[1], i, where))
    return torch.tensor(labels, dtype=torch.int64)


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Raise :class:`DataError` naming the first label outside ``[0, num_classes)``."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero()
    if bad.numel():
        index = int(bad[0, 0])
        raise DataError(
            f"{where}: item {index} has label {int(labels[index])}, outside [0, {num_classes}) "
            f"for num_classes={num_classes}"
        )


def bundle_from_datasets(
    train: Dataset,
    val: Dataset | None = None,
    test: Dataset | None = None,
    *,
    num_classes: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    name: str = "custom",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """Wrap a user's own datasets in a :class:`DataBundle`.

    Items must be ``(image, label)`` with image a tensor ``[C, H, W]`` and label an integer
    (``int`` or a one-element integer tensor); they are passed through unchanged (PyTorch's
    default collate turns ``int`` labels into int64). ``in_channels`` and ``image_size`` come
    from the first training image. Labels are read once to check them and, when
    ``num_classes`` is not given, to infer it as the largest label + 1. When ``val`` is None, a
    seeded ``ceil(len(train) * val_fraction)`` share of ``train`` becomes validation (both
    sides are :class:`torch.utils.data.Subset` views of ``train``). ``mean`` and ``std``, if
    given, say how the images were normalised (one value per channel), so that a teacher
    expecting another normalisation has its inputs re-normalised.
    """
    val_fraction = validate_val_fraction(val_fraction)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    if len(train) == 0:  # type: ignore[arg-type]
        raise DataError(f"dataset {name!r}: the training dataset is empty")

    first = train[0]
    if not isinstance(first, tuple | list) or len(first) < 2:
        raise DataError(
            f"dataset {name!r}: items must be (image, label) pairs; "
            f"item 0 is {type(first).__name__}"
        )
    image = first[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DataError(
            f"dataset {name!r}: images must be tensors of shape [C, H, W]; item 0 is {shape}"
        )

    splits = {"train": train, "val": val, "test": test}
    for key in ("val", "test"):
        if splits[key] is not None and len(splits[key]) == 0:  # type: ignore[arg-type]
            raise DataError(f"dataset {name!r}: the {key} dataset is empty; pass None instead")
    labels = {
        key: _labels_of(ds, f"dataset {name!r} ({key})")
        for key, ds in splits.items()
        if ds is not None
    }
    if num_classes is None:
        num_classes = max(int(lab.max()) for lab in labels.values() if lab.numel()) + 1
        num_classes = max(num_classes, 1)
    for key, lab in labels.items():
        check_labels(lab, num_classes, f"dataset {name!r} ({key})")

    if val is None:
        train_idx, val_idx = split_indices(len(train), val_fraction, seed)  # type: ignore[arg-type]
        val = Subset(train, val_idx.tolist())
        train = Subset(train, train_idx.tolist())

    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=int(image.shape[0]),
        image_size=(int(image.shape[1]), int(image.shape[2])),
        mean=None if mean is None else tuple(float(m) for m in mean),
        std=None if std is None else tuple(float(s) for s in std),
    )


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images - mean) / std`` per channel for ``[N, C, H, W]``; returns a new float32 tensor."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() - m) / s
