"""Datasets: the built-in ones (digits, Fashion-MNIST), users' image folders, CIFAR-10/100 from
their binary files, user-registered ones and user datasets.

``load_data(name, ...)`` looks ``name`` up in :data:`DATASETS`, normalises the images with the
dataset's per-channel constants, keeps the first ``subset`` training images, carves a seeded
validation split off the training images and returns a :class:`DataBundle`.

Add a dataset by registering a loader that returns :class:`RawData`::

    @register_dataset("my-data")
    def my_data(dir=None):
        return RawData(train_x=images, train_y=labels, num_classes=5)

Or wrap existing ``torch.utils.data.Dataset`` objects with :func:`bundle_from_datasets`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from distill.data.augment import AUGMENTATIONS, standard_augment
from distill.data.builtin import load_digits, load_fashion_mnist
from distill.data.bundle import (
    DataBundle,
    RawData,
    TensorImageDataset,
    bundle_from_datasets,
    check_labels,
    normalise,
    split_indices,
    validate_val_fraction,
)
from distill.data.cifar import load_cifar10, load_cifar100
from distill.data.folder import load_folder
from distill.data.text import TEXT_DATASETS, TextData, load_text_data
from distill.errors import ConfigError, DataError, did_you_mean

__all__ = [
    "DATASETS",
    "TEXT_DATASETS",
    "TextData",
    "load",
    "DataBundle",
    "RawData",
    "TensorImageDataset",
    "bundle_from_datasets",
    "load_data",
    "register_dataset",
    "standard_augment",
]

#: Dataset name -> loader. A loader is called with no arguments, or with ``dir=...`` when the
#: caller gives a directory (and ``image_size=...`` when it takes that keyword and the caller
#: gives a size), and returns :class:`RawData`.
DATASETS: dict[str, Callable[..., RawData]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "folder": load_folder,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}

LoaderT = Callable[..., RawData]


def register_dataset(name: str) -> Callable[[LoaderT], LoaderT]:
    """Decorator adding a loader to :data:`DATASETS` under ``name``.

    The loader takes an optional ``dir`` keyword and returns :class:`RawData`. Registering a
    name that is already taken by another function raises :class:`ConfigError` (re-running the
    same definition, e.g. in a notebook, simply replaces it).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a dataset name must be a non-empty string; got {name!r}")

    def decorator(loader: LoaderT) -> LoaderT:
        existing = DATASETS.get(name)
        if existing is not None and _qualified(existing) != _qualified(loader):
            raise ConfigError(
                f"dataset name {name!r} is already registered to {_qualified(existing)}; "
                "choose another name"
            )
        DATASETS[name] = loader
        return loader

    return decorator


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _check_raw(raw: object, name: str) -> RawData:
    if not isinstance(raw, RawData):
        raise DataError(
            f"the loader of dataset {name!r} returned {type(raw).__name__}, not RawData"
        )
    for split in ("train", "val", "test"):
        x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
        if split != "train" and x is None and y is None:
            continue
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(
                f"dataset {name!r}: {split}_x must be a tensor [N, C, H, W]; got {shape}"
            )
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            shape = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise DataError(
                f"dataset {name!r}: {split}_y must be a tensor [{x.shape[0]}] of labels; "
                f"got {shape}"
            )
        if y.is_floating_point():
            raise DataError(f"dataset {name!r}: {split}_y must hold integer labels; got {y.dtype}")
    if raw.train_x.shape[0] == 0:
        raise DataError(f"dataset {name!r} has no training images")
    for split in ("val", "test"):
        x = getattr(raw, f"{split}_x")
        if x is not None and x.shape[1:] != raw.train_x.shape[1:]:
            raise DataError(
                f"dataset {name!r}: {split} images are {list(x.shape[1:])} but training images "
                f"are {list(raw.train_x.shape[1:])}"
            )
    if isinstance(raw.num_classes, bool) or not isinstance(raw.num_classes, int):
        raise DataError(f"dataset {name!r}: num_classes must be an int; got {raw.num_classes!r}")
    if raw.num_classes < 1:
        raise DataError(f"dataset {name!r}: num_classes must be at least 1; got {raw.num_classes}")
    return raw


def _channel_stats(raw: RawData, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    channels = raw.train_x.shape[1]
    if raw.mean is None or raw.std is None:
        x = raw.train_x.double().transpose(0, 1).reshape(channels, -1)
        mean = tuple(x.mean(dim=1).tolist()) if raw.mean is None else tuple(raw.mean)
        # A channel that never varies (e.g. no green anywhere) is only centred: std 1.
        computed = [s if s > 0 else 1.0 for s in x.std(dim=1).tolist()]
        std = tuple(computed) if raw.std is None else tuple(raw.std)
    else:
        mean, std = tuple(raw.mean), tuple(raw.std)
    if len(mean) != channels or len(std) != channels:
        raise DataError(
            f"dataset {name!r}: mean and std need one value per channel ({channels}); "
            f"got mean={mean}, std={std}"
        )
    if any(not s > 0 for s in std):
        raise DataError(f"dataset {name!r}: std must be positive in every channel; got {std}")
    return mean, std


def load_data(
    name: str = "digits",
    *,
    dir: str | os.PathLike | None = None,
    subset: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    augment: str = "none",
    image_size: int | None = None,
) -> DataBundle:
    """Load a registered dataset as a :class:`DataBundle`.

    Args:
        name: a key of :data:`DATASETS` (``"digits"``, ``"fashion-mnist"`` or a registered one).
        dir: where the dataset's files are; passed to the loader (default: its search path).
        subset: keep only the first ``subset`` training images (2 ≤ subset ≤ available).
        val_fraction: share of the (subset of) training images held out for validation, in
            (0, 1); ``ceil(N * val_fraction)`` images. Default: the dataset's own. Not used
            when the dataset has a validation split of its own (a folder's ``val/``).
        seed: seeds the train/validation permutation.
        augment: ``"none"``, or ``"standard"`` (random crop with padding + horizontal flip on
            training items only; see :func:`standard_augment`).
        image_size: height = width of the images. A loader that takes ``image_size`` (the
            ``folder`` dataset) decodes at that size; the images of other datasets are resized
            (bilinear, antialiased) after loading. ``None``: the dataset's own size.

    Every split holds normalised float32 images ``[C, H, W]`` and int64 labels in memory.
    ``test`` is the dataset's official test split (whole, never subset), or None. The bundle's
    ``mean`` and ``std`` are the constants used.
    """
    if name not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise ConfigError(
            f"unknown dataset {name!r}{did_you_mean(str(name), DATASETS)}; registered: {known}"
        )
    if augment not in AUGMENTATIONS:
        allowed = ", ".join(repr(a) for a in AUGMENTATIONS)
        raise ConfigError(f"augment={augment!r} is not supported; allowed values: {allowed}")
    if val_fraction is not None:
        val_fraction = validate_val_fraction(val_fraction)
    if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int)):
        raise ConfigError(f"subset must be an integer number of images or null; got {subset!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer; got {seed!r}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise ConfigError(f"image_size must be a positive integer or null; got {image_size!r}")

    loader = DATASETS[name]
    options: dict[str, object] = {} if dir is None else {"dir": dir}
    sized = image_size is not None and "image_size" in inspect.signature(loader).parameters
    if sized:
        options["image_size"] = image_size
    raw = _check_raw(loader(**options), name)
    if image_size is not None and not sized:
        raw = _resized(raw, image_size)
    if val_fraction is None:
        val_fraction = validate_val_fraction(raw.default_val_fraction)

    train_x, train_y = raw.train_x, raw.train_y.long()
    available = train_x.shape[0]
    if subset is not None:
        if subset < 2 or subset > available:
            raise DataError(
                f"subset={subset} is out of range for dataset {name!r}: it has {available} "
                f"training images, and at least 2 are needed (one to train, one to validate)"
            )
        train_x, train_y = train_x[:subset], train_y[:subset]
    check_labels(train_y, raw.num_classes, f"dataset {name!r} (train)")

    mean, std = _channel_stats(raw, name)
    train_x = normalise(train_x, mean, std)
    if raw.val_x is not None and raw.val_y is not None:
        val_y = raw.val_y.long()
        check_labels(val_y, raw.num_classes, f"dataset {name!r} (val)")
        val = TensorImageDataset(normalise(raw.val_x, mean, std), val_y)
    else:
        train_idx, val_idx = split_indices(train_x.shape[0], val_fraction, seed)
        val = TensorImageDataset(train_x[val_idx], train_y[val_idx])
        train_x, train_y = train_x[train_idx], train_y[train_idx]

    transform = None
    if augment == "standard":
        black = tuple((0.0 - m) / s for m, s in zip(mean, std, strict=True))
        transform = functools.partial(standard_augment, fill=torch.tensor(black))

    test = None
    if raw.test_x is not None and raw.test_y is not None:
        test_y = raw.test_y.long()
        check_labels(test_y, raw.num_classes, f"dataset {name!r} (test)")
        test = TensorImageDataset(normalise(raw.test_x, mean, std), test_y)

    return DataBundle(
        name=name,
        train=TensorImageDataset(train_x, train_y, transform=transform),
        val=val,
        test=test,
        num_classes=raw.num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _resized(raw: RawData, size: int) -> RawData:
    """``raw`` with every split's images resized to ``size`` x ``size`` (bilinear, antialiased,
    on pixel values, before normalisation)."""

    def resize(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None or tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(
            x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)

    return dataclasses.replace(
        raw, train_x=resize(raw.train_x), val_x=resize(raw.val_x), test_x=resize(raw.test_x)
    )


#: DataConfig fields that only text sets take, and those only image sets take.
TEXT_FIELDS = ("files", "tokenizer", "seq_len", "test_fraction", "max_files", "split_by")
IMAGE_FIELDS = ("augment", "image_size")


def load(config: Any, seed: int = 0) -> DataBundle | TextData:
    """The data a recipe's ``data`` section (a :class:`~distill.config.DataConfig`) names: a
    :class:`DataBundle` of images or a :class:`~distill.data.text.TextData`, both with
    ``kind``, ``train``, ``val``, ``test`` and ``collate``.

    Raises:
        ConfigError: an unknown name, or a field that the named set does not take.
    """
    name = config.name
    text = name in TEXT_DATASETS
    if not text and name not in DATASETS:
        known = ", ".join([*DATASETS, *TEXT_DATASETS])
        raise ConfigError(
            f"data.name: unknown dataset {name!r}"
            f"{did_you_mean(str(name), [*DATASETS, *TEXT_DATASETS])}; registered: {known}"
        )
    foreign = [f for f in (IMAGE_FIELDS if text else TEXT_FIELDS) if f in config.given()]
    if foreign:
        takers, other = (DATASETS, "a text") if text else (TEXT_DATASETS, "an image")
        raise ConfigError(
            f"data.{foreign[0]}: applies to the datasets {', '.join(takers)}, but data.name "
            f"is {name!r}, {other} dataset"
        )
    if not text:
        return load_data(
            name,
            dir=config.dir,
            subset=config.subset,
            val_fraction=config.val_fraction,
            seed=seed,
            augment=config.augment,
            image_size=config.image_size,
        )
    options: dict[str, Any] = {"seed": seed}
    for field in ("files", "tokenizer", "seq_len", "subset", "val_fraction", "test_fraction",
                  "max_files", "split_by"):
        if getattr(config, field) is not None:
            options[field] = getattr(config, field)
    if config.dir is not None:
        options["root"] = config.dir
    return load_text_data(name, **options)
